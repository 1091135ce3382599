"""Capability that no judge can game: verifiable-instruction accuracy with IFEval's checkers (lm-eval).

Contract:
- `checkers()` is lm-eval's IFEval instruction registry (`selfreward.ifeval`, which the judge's verifier shares).
- `read_ifeval(path)` reads a file in the IFEval input format (JSONL: key, prompt, instruction_id_list, kwargs)
  and raises `CapabilityError` (one line) on a malformed row or an unknown instruction id.
- `score(rows, responses)` gives the four standard accuracies (prompt / instruction level x strict / loose)
  and per-prompt outcomes for paired comparisons; `floor(rows)` is what one constant short answer reaches.
- `compose_probes()` builds the project's own probe set (base prompts x the checkers' parameters); the shipped
  `recipes/probes/ifeval.jsonl` is its output and is never trained on. `compose_type_probes(types)` gives every
  base prompt with each named type alone (`recipes/probes/ifeval-verified.jsonl`, the verified CPU recipe's).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from selfreward import ifeval

CONSTANT_ANSWER = "OK."


class CapabilityError(ValueError):
    """A bad IFEval input file; the message is one line."""


def checkers() -> dict:
    try:
        return ifeval.checkers()
    except ifeval.IFEvalError as e:
        raise CapabilityError(str(e)) from None


def read_ifeval(path: str | Path) -> list[dict]:
    known = checkers()
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise CapabilityError(f"{path} line {n} is not valid JSON") from None
        if not isinstance(row, dict) or not {"key", "prompt", "instruction_id_list", "kwargs"} <= set(row):
            raise CapabilityError(f"{path} line {n}: expected key, prompt, instruction_id_list and kwargs")
        if len(row["kwargs"]) != len(row["instruction_id_list"]):
            raise CapabilityError(f"{path} line {n}: kwargs and instruction_id_list differ in length")
        for iid in row["instruction_id_list"]:
            if iid not in known:
                raise CapabilityError(f"{path} line {n}: unknown instruction id {iid!r}")
        rows.append(row)
    if not rows:
        raise CapabilityError(f"{path} is empty")
    return rows


def score(rows: list[dict], responses: list[str]) -> dict:
    """IFEval's four accuracies and per-prompt outcomes ({key: {strict, loose, instructions}})."""
    per_prompt, inst_strict, inst_loose = {}, [], []
    for row, response in zip(rows, responses):
        verdict = ifeval.verify(row, response)
        inst_strict += verdict["strict"]
        inst_loose += verdict["loose"]
        per_prompt[str(row["key"])] = {"strict": all(verdict["strict"]), "loose": all(verdict["loose"]),
                                       "instructions": verdict["strict"]}
    n = max(len(per_prompt), 1)
    return {"prompt_strict": sum(p["strict"] for p in per_prompt.values()) / n,
            "prompt_loose": sum(p["loose"] for p in per_prompt.values()) / n,
            "instruction_strict": sum(inst_strict) / max(len(inst_strict), 1),
            "instruction_loose": sum(inst_loose) / max(len(inst_loose), 1),
            "prompts": len(per_prompt), "instructions": len(inst_strict), "per_prompt": per_prompt}


def floor(rows: list[dict]) -> dict:
    """The accuracies of one constant short answer on the same prompts: the level a model must clear."""
    result = score(rows, [CONSTANT_ANSWER] * len(rows))
    return {k: v for k, v in result.items() if k != "per_prompt"}


BASE_PROMPTS = [
    "Explain how a rainbow forms.", "Describe a busy market on a Saturday morning.",
    "Give advice to someone starting to run for exercise.", "Explain why the sky is blue.",
    "Describe how bread is made at home.", "Write a short note thanking a neighbour for their help.",
    "Explain what a library card lets you do.", "Describe the life cycle of a butterfly.",
    "Suggest ways to save water at home.", "Explain how a bicycle stays upright.",
    "Describe a walk through a pine forest in winter.", "Explain what photosynthesis is.",
    "Give tips for keeping a small garden.", "Describe how to plan a weekend trip.",
    "Explain why people need sleep.", "Write a short welcome message for new members of a chess club.",
    "Explain how a thermometer works.", "Describe the sounds of a city at night.",
    "Give advice for learning a new language.", "Explain what recycling does for the environment.",
    "Describe how to make a cup of tea.", "Explain how bees make honey.",
    "Write a short review of an imaginary cafe.", "Explain what causes ocean tides.",
    "Describe a rainy afternoon at a train station.", "Give tips for writing a clear email.",
    "Explain how vaccines help the body.", "Describe how to care for a houseplant.",
    "Explain why leaves change colour in autumn.", "Write a short story opening about a lost key.",
]

# (instruction id, kwargs choices): the checkers' own parameters, with explicit values so prompts are stable
INSTRUCTIONS = [
    ("punctuation:no_comma", [{}]),
    ("change_case:english_lowercase", [{}]),
    ("change_case:english_capital", [{}]),
    ("length_constraints:number_words", [{"num_words": 50, "relation": "less than"},
                                         {"num_words": 80, "relation": "at least"}]),
    ("length_constraints:number_sentences", [{"num_sentences": 3, "relation": "less than"},
                                             {"num_sentences": 4, "relation": "at least"}]),
    ("length_constraints:number_paragraphs", [{"num_paragraphs": 2}, {"num_paragraphs": 3}]),
    ("detectable_format:number_bullet_lists", [{"num_bullets": 3}, {"num_bullets": 4}]),
    ("detectable_format:title", [{}]),
    ("detectable_format:number_highlighted_sections", [{"num_highlights": 2}]),
    ("detectable_format:json_format", [{}]),
    ("detectable_format:multiple_sections", [{"section_spliter": "Section", "num_sections": 2}]),
    ("detectable_content:postscript", [{"postscript_marker": "P.S."}]),
    ("detectable_content:number_placeholders", [{"num_placeholders": 2}]),
    ("keywords:existence", [{"keywords": ["simple", "because"]}, {"keywords": ["first", "important"]}]),
    ("keywords:forbidden_words", [{"forbidden_words": ["very", "really"]}, {"forbidden_words": ["thing", "good"]}]),
    ("keywords:frequency", [{"keyword": "water", "frequency": 2, "relation": "at least"}]),
    ("keywords:letter_frequency", [{"letter": "z", "let_frequency": 2, "let_relation": "less than"}]),
    ("startend:end_checker", [{"end_phrase": "Is there anything else I can help with?"}]),
    ("startend:quotation", [{}]),
    ("change_case:capital_word_frequency", [{"capital_frequency": 3, "capital_relation": "less than"}]),
]


def compose_probes(n: int = 120, seed: int = 0) -> list[dict]:
    """n IFEval-format probes: each base prompt with one or two instructions whose descriptions the checkers
    write themselves, every instruction type used about equally."""
    registry = ifeval.registry()
    rng = random.Random(seed)
    rows = []
    for key in range(n):
        first = INSTRUCTIONS[key % len(INSTRUCTIONS)]
        chosen = [first]
        if key % 3 == 2:  # a third of the prompts carry a second, compatible instruction
            second = INSTRUCTIONS[(key * 7 + 3) % len(INSTRUCTIONS)]
            conflicts = registry.INSTRUCTION_CONFLICTS.get(first[0], set()) if hasattr(
                registry, "INSTRUCTION_CONFLICTS") else set()
            if second[0] != first[0] and second[0] not in conflicts:
                chosen.append(second)
        prompt = BASE_PROMPTS[(key * 11) % len(BASE_PROMPTS)]
        ids, kwargs, text = [], [], [prompt]
        for iid, options in chosen:
            kw = dict(rng.choice(options))
            checker = registry.INSTRUCTION_DICT[iid](iid)
            text.append(checker.build_description(**kw))
            ids.append(iid)
            kwargs.append(kw)
        rows.append({"key": key, "prompt": " ".join(text), "instruction_id_list": ids, "kwargs": kwargs})
    return rows


def compose_type_probes(types: list[str], seed: int = 0) -> list[dict]:
    """Every base prompt with each of `types` alone (the parameters from INSTRUCTIONS, drawn seeded): a probe set
    with the power to measure a few instruction types, as a recipe that trains on some and holds out others
    needs (30 probes a type instead of the shipped set's 6-8)."""
    registry = ifeval.registry()
    options = dict(INSTRUCTIONS)
    unknown = [t for t in types if t not in options]
    if unknown:
        raise CapabilityError(f"no probe parameters for {', '.join(unknown)} (known: {', '.join(options)})")
    rng = random.Random(seed)
    rows = []
    for iid in types:
        for prompt in BASE_PROMPTS:
            kw = dict(rng.choice(options[iid]))
            text = registry.INSTRUCTION_DICT[iid](iid).build_description(**kw)
            rows.append({"key": len(rows), "prompt": f"{prompt} {text}", "instruction_id_list": [iid], "kwargs": [kw]})
    return rows


def install_punkt(wheel: str, dest: str | None = None) -> Path:
    """Copy nltk's English punkt_tab tables (what IFEval's sentence checks need) out of a wheel that ships them
    (llama-index-core) into this environment's nltk_data; nothing else from the wheel is installed."""
    import zipfile

    dest_dir = Path(dest or Path(sys.prefix) / "share" / "nltk_data")
    marker = "_static/nltk_cache/"
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if marker + "tokenizers/punkt_tab/english/" in n and not n.endswith("/")]
        if not names:
            raise CapabilityError(f"{wheel} does not ship nltk's punkt_tab/english")
        for name in names:
            out = dest_dir / name.split(marker, 1)[1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
    return dest_dir


if __name__ == "__main__":
    # python -m selfreward.eval.capability compose OUT [TYPE ...]  rewrite the shipped probe set, or write every
    #                                                            base prompt with each TYPE alone
    # python -m selfreward.eval.capability install-punkt WHEEL    install punkt_tab/english from a wheel
    if sys.argv[1:2] == ["compose"] and len(sys.argv) > 2:
        rows = compose_type_probes(sys.argv[3:]) if sys.argv[3:] else compose_probes()
        Path(sys.argv[2]).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    elif sys.argv[1:2] == ["install-punkt"]:
        print(f"punkt_tab/english installed under {install_punkt(sys.argv[2])}")
    else:
        sys.exit("usage: python -m selfreward.eval.capability compose OUT [TYPE ...] | install-punkt WHEEL")
