"""The report's figures: matplotlib (Agg backend, no display), each returned as PNG bytes.

Contract: every function takes plain numbers by iteration (`{k: value}`; the report gathers them from the run
directory) and returns the PNG of one figure, or None when there is nothing to draw. Iteration k has the same
colour in every figure. No pyplot: figures are built as `matplotlib.figure.Figure` objects, so nothing global
is left behind.
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def colour(k: int):
    return matplotlib.colormaps["tab10"](k % 10)


def _axes(ncols: int, height: float = 3.4, width: float = 10.5):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _interval(ci) -> tuple[float, float] | None:
    return (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None


def _ticks(ax, ks) -> None:
    ks = sorted(ks)
    ax.set_xticks(ks)
    ax.set_xlim(ks[0] - 0.5, ks[-1] + 0.5)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)


def _legend_right(ax) -> None:
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def score_histograms(scores: dict[int, list[float]]) -> bytes | None:
    """Valid judge scores, one outlined histogram per iteration on shared bins."""
    scores = {k: _finite(v) for k, v in scores.items() if _finite(v)}
    if not scores:
        return None
    everything = [s for v in scores.values() for s in v]
    lo, hi = min(everything), max(everything)
    if all(float(s).is_integer() for s in everything):
        bins = [b - 0.5 for b in range(int(lo), int(hi) + 2)]
    else:
        bins = [lo + (hi - lo) * i / 24 for i in range(25)] if hi > lo else [lo - 0.5, lo + 0.5]
    fig, (ax,) = _axes(1)
    for k, v in sorted(scores.items()):
        ax.hist(v, bins=bins, histtype="step", linewidth=2, color=colour(k), label=f"iteration {k} (n={len(v)})")
    ax.set_xlabel("judge score")
    ax.set_ylabel("judgments")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_right(ax)
    ax.grid(alpha=0.3)
    return _png(fig)


def length_boxes(panels: list[tuple[str, dict[int, list[float]]]]) -> bytes | None:
    """One box plot of lengths (tokens) by iteration per panel (title, {k: lengths})."""
    panels = [(t, {k: _finite(v) for k, v in d.items() if _finite(v)}) for t, d in panels]
    panels = [(t, d) for t, d in panels if d]
    if not panels:
        return None
    fig, axes = _axes(len(panels))
    for ax, (title, data) in zip(axes, panels):
        ks = sorted(data)
        box = ax.boxplot([data[k] for k in ks], tick_labels=[str(k) for k in ks], showmeans=True, patch_artist=True)
        for patch, k in zip(box["boxes"], ks):
            patch.set_facecolor(colour(k))
            patch.set_alpha(0.45)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
    return _png(fig)


def metric_lines(series: dict[str, dict[int, float]], ylabel: str) -> bytes | None:
    """A line per metric over iterations (diversity and collapse measures)."""
    series = {name: {k: v for k, v in by_k.items() if _finite([v])} for name, by_k in series.items()}
    series = {name: by_k for name, by_k in series.items() if by_k}
    if not series:
        return None
    fig, (ax,) = _axes(1)
    for name, by_k in series.items():
        ks = sorted(by_k)
        ax.plot(ks, [by_k[k] for k in ks], marker="o", label=name)
    _ticks(ax, {k for by_k in series.values() for k in by_k})
    ax.set_ylabel(ylabel)
    _legend_right(ax)
    return _png(fig)


def _errorbars(ax, points: dict[int, tuple[float, tuple | None]], label: str, offset: float = 0.0, **style):
    ks = sorted(points)
    ys = [points[k][0] for k in ks]
    low = [y - points[k][1][0] if points[k][1] else 0 for k, y in zip(ks, ys)]
    high = [points[k][1][1] - y if points[k][1] else 0 for k, y in zip(ks, ys)]
    ax.errorbar([k + offset for k in ks], ys, yerr=[low, high], fmt="o", capsize=4, label=label, **style)


def win_and_capability(win: dict, gain: dict, gain_m0: dict, accuracy: dict, floor: float | None,
                       min_win_rate: float) -> bytes | None:
    """Frozen-M0 win rate with its 95% interval; IFEval accuracy by iteration; accuracy gains with intervals.
    win, gain, gain_m0: {k: (value, ci95)}; accuracy: {k: {"prompt_strict": .., "instruction_strict": ..}}."""
    win = {k: (v, _interval(ci)) for k, (v, ci) in win.items() if _finite([v])}
    gain = {k: (v, _interval(ci)) for k, (v, ci) in gain.items() if _finite([v])}
    gain_m0 = {k: (v, _interval(ci)) for k, (v, ci) in gain_m0.items() if _finite([v])}
    if not (win or gain or accuracy):
        return None
    fig, axes = _axes(3, height=3.6, width=12)
    ax = axes[0]
    if win:
        _errorbars(ax, win, "win rate vs M(k-1)", color="tab:blue")
    else:  # the frozen judge's verdict tokens had no probability mass (a tiny or random judge)
        ax.text(0.5, 0.3, "not measured", transform=ax.transAxes, ha="center", color="grey")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="no change (0.5)")
    if min_win_rate != 0.5:
        ax.axhline(min_win_rate, color="tab:red", linestyle=":", linewidth=1, label=f"gate bound ({min_win_rate:g})")
    ax.set_title("frozen-M0 judge win rate (95% CI)", fontsize=10)
    _ticks(ax, set(win) or set(gain) | set(gain_m0) or {1})
    ax.legend(fontsize=7)
    ax = axes[1]
    for key, marker in (("prompt_strict", "o"), ("instruction_strict", "s")):
        pts = {k: a[key] for k, a in accuracy.items() if _finite([a.get(key)])}
        if pts:
            ks = sorted(pts)
            ax.plot(ks, [pts[k] for k in ks], marker=marker, label=key.replace("_", "-level "))
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label="constant answer (prompt)")
    ax.set_title("IFEval accuracy", fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    _ticks(ax, set(accuracy) or {0})
    ax.legend(fontsize=7)
    ax = axes[2]
    if gain:
        _errorbars(ax, gain, "vs M(k-1)", -0.08, color="tab:green")
    if gain_m0:
        _errorbars(ax, gain_m0, "vs M0", 0.08, color="tab:purple")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_title("IFEval prompt-level gain (95% CI)", fontsize=10)
    _ticks(ax, set(gain) | set(gain_m0) or {1})
    ax.legend(fontsize=7)
    return _png(fig)


def known_answer(by_kind: dict[str, dict[int, tuple[float, list | None]]]) -> bytes | None:
    """Known-answer accuracy of the judge per corruption type (and overall) by iteration, with 95% intervals."""
    by_kind = {kind: {k: (v, _interval(ci)) for k, (v, ci) in pts.items() if _finite([v])}
               for kind, pts in by_kind.items()}
    by_kind = {kind: pts for kind, pts in by_kind.items() if pts}
    if not by_kind:
        return None
    fig, (ax,) = _axes(1)
    kinds = sorted(by_kind, key=lambda kind: (kind == "all", kind))
    for i, kind in enumerate(kinds):
        offset = (i - (len(kinds) - 1) / 2) * 0.08
        style = {"color": "black", "markersize": 8} if kind == "all" else {}
        _errorbars(ax, by_kind[kind], kind, offset, **style)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("original scored above corrupted")
    _ticks(ax, {k for pts in by_kind.values() for k in pts})
    _legend_right(ax)
    return _png(fig)


def pair_yield(counts: dict[int, dict[str, int]]) -> bytes | None:
    """Per iteration, prompts that became pairs and why the others did not (stacked bars)."""
    counts = {k: c for k, c in counts.items() if sum(c.values()) > 0}
    if not counts:
        return None
    fig, (ax,) = _axes(1)
    ks = sorted(counts)
    reasons = ["pairs"] + sorted({r for c in counts.values() for r in c if r != "pairs"})
    bottom = [0] * len(ks)
    palette = matplotlib.colormaps["Set2"]
    for i, reason in enumerate(reasons):
        heights = [counts[k].get(reason, 0) for k in ks]
        ax.bar(ks, heights, width=0.6, bottom=bottom, color="tab:green" if reason == "pairs" else palette(i),
               label=reason if reason == "pairs" else f"dropped: {reason}")
        bottom = [b + h for b, h in zip(bottom, heights)]
    _ticks(ax, ks)
    ax.set_ylabel("prompts")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_right(ax)
    return _png(fig)


def training_curves(history: dict[int, list[dict]], keys: list[tuple[str, str]]) -> bytes | None:
    """TRL's per-step logs, iterations one after another on a shared step axis; keys: (log key, title)."""
    history = {k: rows for k, rows in history.items() if rows}
    keys = [(key, title) for key, title in keys if any(_finite([r.get(key)]) for rows in history.values()
                                                       for r in rows)]
    if not keys:
        return None
    fig, axes = _axes(len(keys), height=3.2, width=12)
    for ax, (key, title) in zip(axes, keys):
        offset = 0
        for k, rows in sorted(history.items()):
            pts = [(offset + r["step"], r[key]) for r in rows if _finite([r.get(key)]) and "step" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, color=colour(k), label=f"iteration {k}")
            if offset:
                ax.axvline(offset + 0.5, color="grey", linewidth=0.8, linestyle=":")
            offset += max((r.get("step", 0) for r in rows), default=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step (iterations in sequence)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend_right(axes[-1])
    return _png(fig)
