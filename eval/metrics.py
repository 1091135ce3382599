"""Drift and collapse metrics on probe responses."""
from __future__ import annotations

import re


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over every response (Li et al. 2016); 0 when there are none."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def both_order_outcome(winner_ab: str | None, winner_ba: str | None) -> float | None:
    """Candidate shown as A then as B. 1 = candidate wins both orders, 0.5 = split (position bias),
    0 = previous wins both; None when either judgment did not parse."""
    if winner_ab is None or winner_ba is None:
        return None
    return ((winner_ab == "A") + (winner_ba == "B")) / 2


def both_order_probability(p_a_when_first: float | None, p_a_when_second: float | None) -> float | None:
    """Candidate's preference probability averaged over both orders: P(A | candidate is A) and
    P(B | candidate is B) = 1 - P(A | candidate is B). A constant position bias cancels out."""
    if p_a_when_first is None or p_a_when_second is None:
        return None
    return (p_a_when_first + 1 - p_a_when_second) / 2


def kl_estimate(logp_candidate: list[list[float]], logp_previous: list[list[float]]) -> tuple[float, float]:
    """Monte-Carlo KL(candidate || previous) on the candidate's own samples: per sequence and per token."""
    seq = [sum(a) - sum(b) for a, b in zip(logp_candidate, logp_previous)]
    tokens = sum(len(a) for a in logp_candidate)
    return sum(seq) / max(len(seq), 1), sum(seq) / max(tokens, 1)
