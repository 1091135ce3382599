"""The gate: promote M(k) only if drift, collapse and preference checks all pass."""
from __future__ import annotations


def decide(metrics: dict, ev) -> dict:
    """Every check is recorded with its value and threshold; the decision lists the failed ones as reasons."""
    checks = [
        ("win_rate", metrics["win_rate"], ">=", ev.min_win_rate),
        ("length_ratio", metrics["length_ratio"], "<=", ev.max_length_ratio),
        ("length_ratio", metrics["length_ratio"], ">=", ev.min_length_ratio),
        ("distinct2_ratio", metrics["distinct2_ratio"], ">=", ev.min_distinct2_ratio),
        ("judge_valid_rate_delta", metrics["judge_valid_rate_delta"], ">=", -ev.max_valid_rate_drop),
    ]
    rows, reasons = [], []
    for name, value, op, threshold in checks:
        if value is None:
            ok = False
            why = f"{name} could not be measured (no parsed judgments)"
        else:
            ok = value >= threshold if op == ">=" else value <= threshold
            why = f"{name} {value:.3f} {'meets' if ok else 'fails'} {op} {threshold}"
        rows.append({"metric": name, "value": value, "op": op, "threshold": threshold, "passed": ok})
        if not ok:
            reasons.append(why)
    passed = not reasons
    if passed:
        reasons = [f"all {len(rows)} checks passed: win_rate {metrics['win_rate']:.3f}, length_ratio "
                   f"{metrics['length_ratio']:.3f}, distinct2_ratio {metrics['distinct2_ratio']:.3f}, "
                   f"judge_valid_rate_delta {metrics['judge_valid_rate_delta']:+.3f}"]
    return {"passed": passed, "reasons": reasons, "checks": rows}
