"""Judge prompts, rendered and parsed in one place (used by the judge and eval stages).

Contract:
- `render` puts the instruction and the response between tags, escaping any tag-like text inside them, so a
  response cannot close its own block; the format instruction is appended by the scoring mode.
- `judge_items` scores (instruction, response) items under a constitution in the recipe's mode and returns
  one judgment row per (item, sample) with its raw text; the parser reads only the judge's own output.
  * `sampled`: the judge writes; vLLM's structured outputs force the ending (`Score: N` last for
    `reason_first`, first for `score_first`) without constraining the words before it; k samples.
  * `logprob`: one pass ending at the score slot; the score is the expectation over the valid score tokens'
    probabilities (every variant, e.g. "5" and " 5", requested by id); the mass on them is recorded and a
    judgment below `judge.min_score_mass` is invalid.
- Invalid or truncated judgments keep their raw text and get `score: None`, never a default.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from selfreward.constitution import Constitution
from selfreward.engine import Request, Sampling, seed_for

TOP_LOGPROBS = 20  # first-token candidates read after "Winner:"; A and B are always among them
_TAG = re.compile(r"<\s*/?\s*(?:instruction|response)\b[^>]*>", re.IGNORECASE)
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:response\s*)?\(?([AB])\b", re.IGNORECASE)
REASON_FIRST = ("\n\nFirst explain your grade in one or two sentences. Then write your grade on a last line in the "
                "form \"Score: N\", where N is a whole number from {lo} to {hi}.")
SCORE_FIRST = ("\n\nFirst write your grade on a line in the form \"Score: N\", where N is a whole number from {lo} "
               "to {hi}. Then explain it in one sentence.")


def escape(text: str) -> str:
    """Neutralise tag-like text (`</response>`, `<instruction>`, ...) so it cannot end or open a block."""
    return _TAG.sub(lambda m: m.group(0).replace("<", "&lt;").replace(">", "&gt;"), text)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def read_template(path: str) -> str:
    return Path(path).read_text()


def render(con: Constitution, principles: str, instruction: str, response: str, fmt: str) -> str:
    """The judge's user message for one response (and one principle, when principles are scored alone)."""
    body = con.template.format(principles=principles, instruction=escape(instruction), response=escape(response))
    return body + (REASON_FIRST if fmt == "reason_first" else SCORE_FIRST).format(lo=con.score_min,
                                                                                   hi=con.score_max)


def score_regex(con: Constitution, fmt: str, reason_chars: int) -> str:
    """What vLLM's structured outputs allow: free words (no line break, bounded) and a parsable score."""
    digits = f"[{con.score_min}-{con.score_max}]"
    if fmt == "reason_first":
        return rf"[^\n]{{1,{reason_chars}}}\nScore: {digits}"
    return rf"{digits}(\n[^\n]{{0,{reason_chars}}})?"


def parse_reason_first(text: str, con: Constitution) -> float | None:
    """The score on the judge's last line; anything earlier (an echoed 'Score: 5') is not read."""
    m = re.search(r"(?:^|\n)\s*Score:\s*(\d+)\s*$", text)
    return _in_range(m.group(1), con) if m else None


def parse_score_first(completion: str, con: Constitution) -> float | None:
    """The first token after the 'Score: ' prefill."""
    m = re.match(r"\s*(\d+)(?!\s*[/.]\d)(?:\D|$)", completion)
    return _in_range(m.group(1), con) if m else None


def _in_range(digits: str, con: Constitution) -> float | None:
    value = int(digits)
    return float(value) if con.score_min <= value <= con.score_max else None


def score_slot(tokenizer, con: Constitution) -> tuple[str, dict[int, int]]:
    """(prefill, token id -> score) for the score slot. Where " 5" is one token, the prefill ends at "Score:"
    and both " 5" and "5" count; where the tokenizer splits the space off, the prefill is "Score: "."""
    def single(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    spaced = {single(f" {s}"): s for s in con.scores}
    plain = {single(str(s)): s for s in con.scores}
    if None in plain:
        raise ValueError("the tokenizer does not encode every score as one token; use judge.mode: sampled")
    if None not in spaced:
        return "Score:", {**plain, **spaced}
    return "Score: ", plain


def expected_score(logprobs: dict[int, float], ids: dict[int, int]) -> tuple[float | None, float]:
    """(expected score over the valid score tokens, their total probability mass)."""
    probs = {t: math.exp(lp) for t, lp in logprobs.items() if t in ids and lp > float("-inf")}
    mass = sum(probs.values())
    if mass <= 0:
        return None, 0.0
    return sum(p * ids[t] for t, p in probs.items()) / mass, mass


def _requests(con, jc, items, adapter, seed_parts, prefill):
    slots, reqs = [], []
    samples = jc.num_judgments if jc.mode == "sampled" else 1
    for item in items:
        for n in range(samples):
            for unit, principles in con.units():
                text = render(con, principles, item["instruction"], item["response"],
                              "score_first" if jc.mode == "logprob" else jc.format)
                seed = seed_for(*seed_parts, item["id"], n, unit or "")
                reqs.append(Request(_user(text), seed, adapter, prefill))
                slots.append((item, n, unit))
    return slots, reqs


def _read(con, jc, out, prefill, ids) -> dict:
    """One request's verdict: score or None with why, and the raw text as the judge wrote it."""
    raw = prefill + out.text
    row = {"raw": raw, "finish_reason": out.finish_reason}
    if jc.mode == "logprob":
        score, mass = expected_score(out.score_logprobs or {}, ids)
        row["score_mass"] = round(mass, 6)
        valid = score is not None and mass >= jc.min_score_mass
        row.update(score=round(score, 6) if valid else None, invalid=None if valid else "low_score_mass")
        return row
    if jc.format == "reason_first":
        score = parse_reason_first(out.text, con)
    else:
        score = parse_score_first(out.text, con)
    why = None if score is not None else "truncated" if out.finish_reason == "length" else "unparsed"
    row.update(score=score, invalid=why)
    return row


def _merge(con, item, n, parts: dict) -> dict:
    """One judgment of one item: the principles' verdicts combined (all must be valid)."""
    scores = {unit: p["score"] for unit, p in parts.items()}
    valid = all(s is not None for s in scores.values())
    first = next(iter(parts.values()))
    row = {"response_id": item["id"], "judgment": n, "constitution_sha256": con.sha256,
           "score": round(sum(scores.values()) / len(scores), 6) if valid else None,
           "invalid": None if valid else next(p["invalid"] for p in parts.values() if p["invalid"]),
           "raw": first["raw"] if len(parts) == 1 else {u: p["raw"] for u, p in parts.items()},
           "finish_reason": first["finish_reason"]}
    if "prompt_id" in item:
        row["prompt_id"] = item["prompt_id"]
    if con.scoring == "per_principle":
        row["subscores"] = scores
    if "score_mass" in first:
        row["score_mass"] = min(p["score_mass"] for p in parts.values())
    return row


def judge_items(engine, con: Constitution, jc, items: list[dict], adapter: str | None, seed_parts: tuple,
                run_sharded=None, shard_dir: Path | None = None, prefix: str = "", label: str = "") -> list[dict]:
    """Judge items ({id, instruction, response[, prompt_id]}), in shards when given `run_sharded`; one row per
    (item, sample)."""
    ids: dict[int, int] = {}
    if jc.mode == "logprob":
        prefill, ids = score_slot(engine.tokenizer, con)
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=1, score_token_ids=tuple(sorted(ids)))
    else:
        prefill = "" if jc.format == "reason_first" else "Score: "
        regex = score_regex(con, jc.format, jc.reason_max_chars) if jc.structured else None
        sampling = Sampling(temperature=jc.temperature, top_p=1.0, max_tokens=jc.max_tokens, regex=regex)
    per_item = len(con.units()) * (jc.num_judgments if jc.mode == "sampled" else 1)

    def work(chunk):
        slots, reqs = _requests(con, jc, chunk, adapter, seed_parts, prefill)
        outs = engine.generate(reqs, sampling)
        grouped: dict[tuple, dict] = {}
        for (item, n, unit), out in zip(slots, outs):
            grouped.setdefault((item["id"], n), {"item": item, "parts": {}})["parts"][unit or "score"] = \
                _read(con, jc, out, prefill, ids)
        return [_merge(con, g["item"], n, g["parts"]) for (_, n), g in grouped.items()]

    if run_sharded is None:
        return work(items)
    size = max(1, jc.shard_size // per_item)
    return run_sharded(items, size, shard_dir, prefix, work, desc=label)


def mean_scores(judgments: list[dict]) -> dict[str, float]:
    """Average of the valid scores per response; a response with no valid judgment gets no score."""
    sums: dict[str, list[float]] = {}
    for j in judgments:
        if j["score"] is not None:
            sums.setdefault(j["response_id"], []).append(j["score"])
    return {rid: sum(v) / len(v) for rid, v in sums.items()}


def pairwise_request(template: str, instruction: str, response_a: str, response_b: str, prefill: str,
                     adapter: str | None = None) -> Request:
    """An A/B request (greedy): the frozen judge M0 in eval, or M(k-1) confirming its own pairs."""
    text = template.format(instruction=escape(instruction), response_a=escape(response_a),
                           response_b=escape(response_b))
    return Request(_user(text), 0, adapter, prefill)


def parse_winner(text: str) -> str | None:
    """'A' or 'B' from the first 'Winner: X' in the text (the template asks for it first), or None."""
    match = _WINNER.search(text)
    return match.group(1).upper() if match else None


def preference_a(first_token_logprobs: dict[str, float] | None) -> float | None:
    """P(A) / (P(A) + P(B)) for the token right after 'Winner:', from the judge's own distribution.

    A small judge that nearly always writes 'A' still puts more or less mass on 'B' depending on the pair;
    averaging this probability over both orders measures preference where greedy verdicts only show position bias.
    """
    if not first_token_logprobs:
        return None
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in first_token_logprobs.items():
        key = token.strip().upper()
        if key in mass:
            mass[key] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None
