"""Judge prompts, rendered and parsed in one place (used by the judge and eval stages).

Contract: `judge_request` and `pairwise_request` build the engine requests from a constitution or pairwise
template; `parse_score`, `parse_winner` and `preference_a` read only the judge's own output. What does not
parse is None: never a default score.
"""
from __future__ import annotations

import re
from pathlib import Path

from selfreward.engine import Request

SCORE_MIN, SCORE_MAX = 0, 5  # the additive rubric's range
TOP_LOGPROBS = 20  # first-token candidates read after "Winner:"; A and B are always among them

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?", re.IGNORECASE)
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:response\s*)?\(?([AB])\b", re.IGNORECASE)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def read_template(path: str) -> str:
    return Path(path).read_text()


def judge_request(template: str, instruction: str, response: str, seed: int, adapter: str | None,
                  prefill: str) -> Request:
    """The judge's request for one response under a constitution with {instruction} and {response}."""
    return Request(_user(template.format(instruction=instruction, response=response)), seed, adapter, prefill)


def pairwise_request(template: str, instruction: str, response_a: str, response_b: str, prefill: str) -> Request:
    """The frozen judge's A/B request (greedy, base model)."""
    text = template.format(instruction=instruction, response_a=response_a, response_b=response_b)
    return Request(_user(text), 0, None, prefill)


def parse_score(text: str, lo: int = SCORE_MIN, hi: int = SCORE_MAX) -> float | None:
    """The first 'Score: N' in the text (the rubric asks for the score first), N in [lo, hi]; else None."""
    match = _SCORE.search(text)
    if not match or match.group(2) is not None and int(match.group(2)) != hi:
        return None  # "Score: 4/10" is on another scale: not a rubric score
    value = float(match.group(1))
    return value if lo <= value <= hi else None


def parse_winner(text: str) -> str | None:
    """'A' or 'B' from the first 'Winner: X' in the text (the template asks for it first), or None."""
    match = _WINNER.search(text)
    return match.group(1).upper() if match else None


def preference_a(first_token_logprobs: dict[str, float] | None) -> float | None:
    """P(A) / (P(A) + P(B)) for the token right after 'Winner:', from the judge's own distribution.

    A small judge that nearly always writes 'A' still puts more or less mass on 'B' depending on the pair;
    averaging this probability over both orders measures preference where greedy verdicts only show position bias.
    """
    import math

    if not first_token_logprobs:
        return None
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in first_token_logprobs.items():
        key = token.strip().upper()
        if key in mass:
            mass[key] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None
