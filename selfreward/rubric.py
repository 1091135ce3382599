"""Reading judge outputs (used by judge and eval). What does not parse is None: never a default score."""
from __future__ import annotations

import re

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*([0-9](?:\.\d+)?)\s*\**\s*(?:/\s*5|out of 5|points?)?", re.IGNORECASE)
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:response\s*)?\(?([AB])\b", re.IGNORECASE)


def parse_score(text: str, lo: int = 0, hi: int = 5) -> float | None:
    """The score of the last 'Score: N' in the text (N in [lo, hi]), or None if there is none."""
    matches = _SCORE.findall(text)
    if not matches:
        return None
    value = float(matches[-1])
    return value if lo <= value <= hi else None


def parse_winner(text: str) -> str | None:
    """'A' or 'B' from the last 'Winner: X' in the text, or None."""
    matches = _WINNER.findall(text)
    return matches[-1].upper() if matches else None
