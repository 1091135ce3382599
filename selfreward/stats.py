"""Small statistics used by judge and eval: intervals and rank correlations, without a SciPy dependency.

Contract: every function takes plain lists and returns floats (or None where the statistic is undefined,
such as a correlation of a constant); nothing here is random unless given a seed.
"""
from __future__ import annotations

import math
import random

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (95% by default); (None, None) when n == 0."""
    if n == 0:
        return None, None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None for fewer than 2 points or a constant."""
    return pearson(ranks(x), ranks(y))


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (tie-corrected rank agreement); None when either side is constant."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else None


def bootstrap_mean(values: list[float], seed: int = 0, reps: int = 2000,
                   clusters: list | None = None) -> tuple[float | None, float | None]:
    """Percentile bootstrap 95% interval of a mean; (None, None) for no values. With `clusters` (one label per
    value), whole clusters are resampled: values that share a label (probes built on one base prompt) are not
    independent, and resampling them one by one would make the interval too narrow."""
    if not values:
        return None, None
    rng = random.Random(seed)
    if clusters is None:
        n = len(values)
        means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
        return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]
    groups: dict = {}
    for v, c in zip(values, clusters, strict=True):
        groups.setdefault(c, []).append(v)
    sums = [(sum(g), len(g)) for g in groups.values()]
    m = len(sums)
    means = []
    for _ in range(reps):
        draw = [sums[rng.randrange(m)] for _ in range(m)]
        means.append(sum(s for s, _ in draw) / sum(n for _, n in draw))
    means.sort()
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]
