"""Drift: how far the candidate moved from the previous model, measured on the candidate's own samples.

Contract: `kl_estimate` is the Monte-Carlo KL(candidate || previous) from per-token log-probabilities of
samples drawn from the candidate at temperature 1 (samples at a lower temperature bias it); `entropy` is the
candidate's mean negative log-probability per token of those samples (a Monte-Carlo entropy estimate).
"""
from __future__ import annotations


def kl_estimate(logp_candidate: list[list[float]], logp_previous: list[list[float]]) -> tuple[float, float]:
    """Monte-Carlo KL(candidate || previous) on the candidate's own samples: per sequence and per token."""
    seq = [sum(a) - sum(b) for a, b in zip(logp_candidate, logp_previous)]
    tokens = sum(len(a) for a in logp_candidate)
    return sum(seq) / max(len(seq), 1), sum(seq) / max(tokens, 1)


def entropy_per_token(logp_candidate: list[list[float]]) -> float | None:
    tokens = sum(len(a) for a in logp_candidate)
    return -sum(sum(a) for a in logp_candidate) / tokens if tokens else None
