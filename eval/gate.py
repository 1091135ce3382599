"""The gate: promote M(k) only on evidence of improvement with no guarded regression.

Contract: `decide(m, gate)` takes the eval stage's measurements and the recipe's `eval.gate` and returns the
decision written to `decision.json`: every improvement measure and every guard with its value, interval, bound,
pass/fail and a reason in plain words; `passed` is true only when at least one improvement measure is
significant (its 95% interval clears its bound) and no enforced guard fails. A candidate identical to its
parent has a win rate of exactly 0.5 and no capability change, so it is refused for "no evidence of
improvement". A metric that could not be measured fails its guard: the gate never passes on a missing value.
"""
from __future__ import annotations


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})"


def improvements(m: dict, g) -> list[dict]:
    specs = [("win_rate", "win_rate", g.min_win_rate, "frozen-M0 win rate"),
             ("capability", "capability_gain", g.min_capability_gain, "IFEval prompt-level strict accuracy gain")]
    rows = []
    for name, key, bound, what in specs:
        if name not in g.improvement:
            continue
        ci = m[f"{key}_ci95"]
        ok = ci[0] is not None and ci[0] > bound
        rows.append({"metric": name, "value": m[key], "ci95": ci, "bound": bound, "significant": ok,
                     "reason": f"{what} {_fmt(m[key])}{_ci(ci)} {'is above' if ok else 'does not clear'} {bound}"})
    return rows


def _guard_specs(m: dict, g) -> list[tuple]:
    """(guard, metric, value, op, bound, what) for every check a guard makes."""
    prev = m["previous"]

    def rise(key):
        return None if m.get(key) is None or prev.get(key) is None else m[key] - prev[key]

    return [
        ("capability", "capability_gain", m["capability_gain"], ">=", -g.max_capability_drop,
         "accuracy change vs the previous model"),
        ("capability", "capability_gain_vs_m0", m["capability_gain_vs_m0"], ">=", -g.max_capability_drop,
         "accuracy change vs M0"),
        ("length", "length_ratio", m["length_ratio"], ">=", g.min_length_ratio, "mean length vs previous"),
        ("length", "length_ratio", m["length_ratio"], "<=", g.max_length_ratio, "mean length vs previous"),
        ("distinct2", "distinct2_ratio", m["distinct2_ratio"], ">=", g.min_distinct2_ratio, "distinct-2 vs previous"),
        ("semantic_similarity", "semantic_similarity_rise", rise("semantic_similarity"), "<=", g.max_similarity_rise,
         "rise of the mean pairwise embedding cosine"),
        ("repetition", "repetition_rise", rise("repetition4"), "<=", g.max_repetition_rise,
         "rise of repeated 4-grams within responses"),
        ("cross_overlap", "cross_overlap_rise", rise("cross_overlap4"), "<=", g.max_overlap_rise,
         "rise of 4-gram overlap across responses"),
        ("kl", "kl_per_token", m["kl_per_token"], "<=", g.max_kl_per_token, "KL(candidate || previous) per token"),
        ("judge_valid_rate", "judge_valid_rate_delta", m["judge_valid_rate_delta"], ">=", -g.max_judge_valid_drop,
         "change of the candidate-as-judge valid rate"),
        ("known_answer", "known_answer_delta", m["known_answer_delta"], ">=", -g.max_known_answer_drop,
         "change of the judge's known-answer accuracy vs the previous iteration"),
        ("judge_saturation", "top_score_share", m["top_score_share"], "<=", g.max_top_score_share,
         "share of responses at the top score"),
    ]


def guards(m: dict, g) -> list[dict]:
    rows = []
    for guard, metric, value, op, bound, what in _guard_specs(m, g):
        if guard not in g.guards:
            continue
        optional = metric == "known_answer_delta" and m.get("known_answer_delta_reason") == "no previous judge"
        if value is None:
            ok = optional
            why = f"{metric} ({what}) not applicable: no previous judge" if optional else \
                f"{metric} ({what}) could not be measured"
        else:
            ok = value >= bound if op == ">=" else value <= bound
            why = f"{metric} {_fmt(value)} ({what}) {'meets' if ok else 'fails'} {op} {bound:g}"
        rows.append({"guard": guard, "metric": metric, "value": value, "op": op, "bound": bound, "passed": ok,
                     "reason": why, "ci95": m.get(f"{metric}_ci95")})
    return rows


def decide(m: dict, g) -> dict:
    better = improvements(m, g)
    checks = guards(m, g)
    failed = [c for c in checks if not c["passed"]]
    evidence = [b for b in better if b["significant"]]
    reasons = [c["reason"] for c in failed]
    if not evidence:
        reasons.insert(0, "no evidence of improvement: " + "; ".join(b["reason"] for b in better))
    passed = bool(evidence) and not failed
    if passed:
        reasons = [f"improved: {'; '.join(b['reason'] for b in evidence)}; all {len(checks)} guards passed"]
    return {"passed": passed, "reasons": reasons, "improvement": better, "guards": checks}
