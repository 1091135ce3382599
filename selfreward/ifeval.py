"""IFEval's verifiable instructions, from lm-eval's own checkers: the registry, seeded descriptions, verdicts.

Contract:
- `registry()` imports lm-eval's IFEval instruction registry without lm-eval's task manager (whose imports need
  packages the checkers do not); nltk's punkt_tab data must be installed (`python -m selfreward.extras install`).
  It raises `IFEvalError` (one line) when lm-eval is missing. Nothing here imports torch.
- `describe(iid, seed, base)` draws an instruction's parameters with the checker's own `build_description`,
  seeded (the checkers draw from the global `random`, whose state is restored afterwards), and returns the text
  and the kwargs in the IFEval input format (`{}` for an instruction without parameters).
- `verify(row, response)` checks one response to one IFEval-format row (key, prompt, instruction_id_list,
  kwargs) with lm-eval's strict and loose tests: a verdict per instruction, never a default.
- `base_prompt(row)` is the row's prompt without the instructions' descriptions where the checkers' own text can
  be found in it (how the shipped probes and data_gen's constrained prompts are written), else the whole prompt.
- `conflicts(a, b)` says whether two instruction types contradict each other (lm-eval's conflict table).
"""
from __future__ import annotations

import importlib.util
import random
import sys
import types
from pathlib import Path

# instruction types whose description needs text that only the prompt's author can give (an original message
# to rephrase, the prompt to repeat): data_gen cannot attach them to a prompt on its own
NEEDS_AUTHOR = frozenset({"combination:repeat_prompt", "detectable_content:rephrase", "detectable_format:rephrase"})


class IFEvalError(ValueError):
    """lm-eval's checkers are not available, or an instruction cannot be built; the message is one line."""


def _load():
    if "lm_eval.tasks" not in sys.modules:
        spec = importlib.util.find_spec("lm_eval")
        if spec is None:
            raise IFEvalError("lm-eval is not installed (python -m selfreward.extras install adds it)")
        tasks = types.ModuleType("lm_eval.tasks")  # a bare package: the checkers, not the task manager
        tasks.__path__ = [str(Path(spec.origin).parent / "tasks")]
        sys.modules["lm_eval.tasks"] = tasks
    from lm_eval.tasks.ifeval import instructions_registry, utils

    return instructions_registry, utils


def registry():
    """lm-eval's `instructions_registry` module (INSTRUCTION_DICT, INSTRUCTION_CONFLICTS)."""
    return _load()[0]


def checkers() -> dict:
    return registry().INSTRUCTION_DICT


def attachable() -> list[str]:
    """Instruction types data_gen can attach to any prompt (their parameters need no author's text)."""
    return sorted(set(checkers()) - NEEDS_AUTHOR)


def conflicts(a: str, b: str) -> bool:
    table = getattr(registry(), "INSTRUCTION_CONFLICTS", {})
    return a == b or b in table.get(a, set()) or a in table.get(b, set())


def describe(iid: str, seed: int, kwargs: dict | None = None) -> tuple[str, dict]:
    """(description, kwargs) of one instruction; parameters not given are drawn by the checker, seeded."""
    checker = checkers()[iid](iid)
    state = random.getstate()
    try:
        random.seed(seed)
        text = checker.build_description(**(kwargs or {}))
        args = checker.get_instruction_args()
    finally:
        random.setstate(state)
    return text, dict(args or {})


def _example(row: dict):
    return _load()[1].InputExample(key=row.get("key", 0), instruction_id_list=row["instruction_id_list"],
                                   prompt=row["prompt"], kwargs=row["kwargs"])


def verify(row: dict, response: str) -> dict:
    """{strict: [bool per instruction], loose: [...]}: lm-eval's own strict and loose tests."""
    utils = _load()[1]
    example = _example(row)
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
    return {"strict": list(strict.follow_instruction_list), "loose": list(loose.follow_instruction_list)}


def base_prompt(row: dict) -> str:
    """The prompt without its instructions' descriptions (each regenerated from its kwargs by the checker)."""
    text = row["prompt"]
    for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
        if iid not in checkers() or iid in NEEDS_AUTHOR:
            continue
        try:
            description = describe(iid, 0, {k: v for k, v in (kw or {}).items() if v is not None})[0]
        except (TypeError, ValueError):  # kwargs this checker does not take: the row keeps its text
            continue
        text = text.replace(description, " ")
    return " ".join(text.split())
