"""The gate: promote M(k) only on evidence of improvement with no guarded regression.

Contract: `decide(m, gate)` takes the eval stage's measurements and the recipe's `eval.gate` and returns the
decision written to `decision.json`: every improvement measure and every guard with its value, interval, bound,
pass/fail and a reason in plain words; `passed` is true only when at least one improvement measure is
significant (its 95% interval clears its bound) and no enforced guard fails. A candidate identical to its
parent has a win rate of exactly 0.5 and no capability change, so it is refused for "no evidence of
improvement". A capability gain is evidence only when the probes (or instructions) a constant short answer
fails gain too (`capability_needs_hard_gain`, on by default): otherwise a model that learnt to say less would
pass. A metric that could not be measured fails its guard: the gate never passes on a missing value; a guard
with nothing to compare by design (no previous judge, a run without constraints for the type splits) passes and
says why.
"""
from __future__ import annotations


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})"


def _split(m: dict, name: str) -> dict:
    return (m.get("capability_splits") or {}).get(name) or {}


def _evidence(m: dict, g) -> list[tuple]:
    """(name, value, ci95, bound, what, hard gain or None): each improvement measure the gate can name."""
    out = [("win_rate", m["win_rate"], m["win_rate_ci95"], g.min_win_rate, "frozen-M0 win rate", None),
           ("capability", m["capability_gain"], m["capability_gain_ci95"], g.min_capability_gain,
            "IFEval prompt-level strict accuracy gain", (m.get("capability_gain_hard"), "probes"))]
    for name, what in (("trained", "trained"), ("held_out", "held-out")):
        s = _split(m, name)
        out.append((f"capability_{name}", s.get("gain"), s.get("gain_ci95") or [None, None], g.min_capability_gain,
                    f"instruction-level strict accuracy gain on the {what} types", (s.get("gain_hard"), "instructions")))
    return out


def improvements(m: dict, g) -> list[dict]:
    rows = []
    for name, value, ci, bound, what, hard in _evidence(m, g):
        if name not in g.improvement:
            continue
        ok = ci[0] is not None and ci[0] > bound
        reason = f"{what} {_fmt(value)}{_ci(ci)} {'is above' if ok else 'does not clear'} {bound}"
        if ok and hard is not None and g.capability_needs_hard_gain and not (hard[0] is not None and hard[0] > 0):
            ok = False  # a gain only where "OK." already passes: the model may have learnt to say less
            reason += (f", but on the {hard[1]} a constant short answer fails it is {_fmt(hard[0])}: a gain only "
                       f"where a short answer passes is not evidence (eval.gate.capability_needs_hard_gain)")
        rows.append({"metric": name, "value": value, "ci95": ci, "bound": bound, "significant": ok,
                     "reason": reason})
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
        ("capability_trained", "capability_trained_gain", _split(m, "trained").get("gain"), ">=",
         -g.max_capability_drop, "trained-type accuracy change vs the previous model"),
        ("capability_held_out", "capability_held_out_gain", _split(m, "held_out").get("gain"), ">=",
         -g.max_capability_drop, "held-out-type accuracy change vs the previous model"),
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


def _not_applicable(m: dict, metric: str) -> str | None:
    """Why a guard has nothing to compare, where that is by design (not a failure to measure)."""
    if metric == "known_answer_delta" and m.get("known_answer_delta_reason") == "no previous judge":
        return "no previous judge"
    name = {"capability_trained_gain": "trained", "capability_held_out_gain": "held_out"}.get(metric)
    splits = m.get("capability_splits") or {}
    if name and name in splits and splits[name] is None:
        return splits.get("reason") or "no constrained prompts"
    if name and (splits.get(name) or {}).get("n_instructions") == 0:
        return "no probe carries these types"
    return None


def guards(m: dict, g) -> list[dict]:
    rows = []
    for guard, metric, value, op, bound, what in _guard_specs(m, g):
        if guard not in g.guards:
            continue
        why_not = _not_applicable(m, metric)
        if value is None:
            ok = why_not is not None
            why = f"{metric} ({what}) not applicable: {why_not}" if ok else f"{metric} ({what}) could not be measured"
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
