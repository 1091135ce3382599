"""Preference pairs from scored responses, by a strategy chosen in the recipe.

Contract: `build_pairs` picks at most one (chosen, rejected) per prompt and records in each pair's provenance
which strategy made it. Never a pair from: an unscored response, a tie or a margin below `min_margin`,
identical texts, or a truncated chosen response (unless `allow_truncated`). Selections:
- `best_worst` (Self-Rewarding LMs): the best-scored response against the worst;
- `length_controlled` (Meta-Rewarding): the shortest response of the top score band against the longest of the
  bottom band (bands are `length_band` wide);
- `anchored` (Temporal Self-Rewarding): the best response against the worst of M0's anchor responses.
Both-order confirmation by the judge is applied afterwards by the stage (`confirm`).
With verifier verdicts (`judge.verify: ifeval`) on a constrained prompt, `judge.reward` decides what is compared:
verifier_first and verifier restrict chosen to the responses that follow the most instructions and rejected to
those that follow the fewest, then apply the selection by the judge's scores inside them (a verifier tie falls
back to the judge, or under verifier makes no pair); weighted compares a weighted sum of both signals. Each
pair's provenance records the rule, the signal that decided it and both sides' verdicts (`reward`).
"""
from __future__ import annotations


def _truncated(r: dict) -> bool:
    return r.get("finish_reason") == "length"


def _select(jc, chosen_pool: list[dict], rejected_pool: list[dict], scores: dict) -> tuple[dict, dict]:
    """Chosen from `chosen_pool` (complete responses), rejected from `rejected_pool`, by the judge's scores."""
    if jc.pair_strategy == "length_controlled":
        top = max(scores[r["id"]] for r in chosen_pool)
        bottom = min(scores[r["id"]] for r in rejected_pool)
        chosen = min((r for r in chosen_pool if scores[r["id"]] >= top - jc.length_band), key=lambda r: r["n_tokens"])
        rejected = max((r for r in rejected_pool if scores[r["id"]] <= bottom + jc.length_band),
                       key=lambda r: r["n_tokens"])
        return chosen, rejected
    chosen = max(chosen_pool, key=lambda r: scores[r["id"]])  # first best by sample index on ties
    return chosen, min(rejected_pool, key=lambda r: scores[r["id"]])


def _weighted(jc, rows: list[dict], scores: dict, verdicts: dict, score_range: tuple) -> dict:
    lo, hi = score_range
    w = jc.verifier_weight
    return {r["id"]: w * verdicts[r["id"]]["share"] + (1 - w) * (scores[r["id"]] - lo) / (hi - lo) for r in rows}


def _choose(jc, rule: str, candidates: list[dict], anchors: list[dict], scores: dict, verdicts: dict | None,
            score_range: tuple) -> tuple[dict | None, dict | None, dict, str | None]:
    """(chosen, rejected, the scores they were compared by, which signal decided) or a reason to drop."""
    eligible = [r for r in candidates if jc.allow_truncated or not _truncated(r)]
    pool = anchors if jc.pair_strategy == "anchored" else candidates
    if not eligible:
        return None, None, scores, "no_complete_response"
    verified = verdicts is not None and rule != "judge" and all(r["id"] in verdicts for r in eligible + pool)
    if verified and rule == "weighted":
        ranked = _weighted(jc, eligible + pool, scores, verdicts, score_range)
        chosen, rejected = _select(jc, eligible, pool, ranked)
        return chosen, rejected, ranked, "weighted"
    if verified:
        top = max(verdicts[r["id"]]["share"] for r in eligible)
        bottom = min(verdicts[r["id"]]["share"] for r in pool)
        if top > bottom:
            chosen, rejected = _select(jc, [r for r in eligible if verdicts[r["id"]]["share"] == top],
                                       [r for r in pool if verdicts[r["id"]]["share"] == bottom], scores)
            return chosen, rejected, scores, "verifier"
        if rule == "verifier":
            return None, None, scores, "verifier_tie"
    chosen, rejected = _select(jc, eligible, pool, scores)
    return chosen, rejected, scores, "judge"


def build_pairs(prompts: list[dict], responses: list[dict], scores: dict[str, float], raw: dict[str, list],
                jc, provenance: dict, verdicts: dict[str, dict] | None = None,
                score_range: tuple[float, float] = (0, 5)) -> tuple[list[dict], dict]:
    by_prompt: dict[str, list[dict]] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    rule = jc.reward_rule()
    pairs = []
    dropped = {"fewer_than_two_scored": 0, "no_complete_response": 0, "tie": 0, "below_margin": 0, "identical": 0}
    if rule == "verifier":
        dropped["verifier_tie"] = 0
    for p in prompts:
        scored = sorted((r for r in by_prompt.get(p["id"], []) if r["id"] in scores), key=lambda r: r["sample"])
        candidates = [r for r in scored if not r.get("anchor")]
        anchors = [r for r in scored if r.get("anchor")]
        if len(candidates) + (len(anchors) if jc.pair_strategy == "anchored" else 0) < 2 or not candidates or \
                jc.pair_strategy == "anchored" and not anchors:
            dropped["fewer_than_two_scored"] += 1
            continue
        chosen, rejected, ranked, decided = _choose(jc, rule, candidates, anchors, scores, verdicts, score_range)
        if chosen is None:
            dropped[decided] += 1
            continue
        margin = ranked[chosen["id"]] - ranked[rejected["id"]]
        reason = ("identical" if chosen["response"].strip() == rejected["response"].strip() else None) \
            if decided == "verifier" else \
            ("tie" if margin <= 0 else "below_margin" if margin < jc.min_margin else
             "identical" if chosen["response"].strip() == rejected["response"].strip() else None)
        if reason:
            dropped[reason] += 1
            continue
        pairs.append(_pair(p, chosen, rejected, scored, scores, raw, jc, provenance,
                           _reward(rule, decided, chosen, rejected, ranked, verdicts)))
    return pairs, dropped


def _reward(rule: str, decided: str, chosen: dict, rejected: dict, ranked: dict, verdicts: dict | None) -> dict:
    """How the pair was decided: the rule, the signal that decided it, and each side's verifier verdict."""
    out = {"rule": rule, "decided_by": decided}
    if verdicts and chosen["id"] in verdicts and rejected["id"] in verdicts:
        out.update(chosen_share=verdicts[chosen["id"]]["share"], rejected_share=verdicts[rejected["id"]]["share"],
                   shuffled=bool(verdicts[chosen["id"]].get("shuffled")))
    if decided == "weighted":
        out.update(chosen_reward=ranked[chosen["id"]], rejected_reward=ranked[rejected["id"]])
    return out


def _pair(p: dict, chosen: dict, rejected: dict, scored: list[dict], scores: dict, raw: dict, jc, provenance: dict,
          reward: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": p["instruction"]}],
        "chosen": [{"role": "assistant", "content": chosen["response"]}],
        "rejected": [{"role": "assistant", "content": rejected["response"]}],
        "provenance": {
            **provenance,
            "prompt_id": p["id"], "source": p.get("source", "self-instruct"),
            "strategy": {"selection": jc.pair_strategy, "min_margin": jc.min_margin,
                         "allow_truncated": jc.allow_truncated, "confirm_both_orders": jc.confirm_both_orders},
            "reward": reward,
            "chosen_id": chosen["id"], "rejected_id": rejected["id"],
            "chosen_score": scores[chosen["id"]], "rejected_score": scores[rejected["id"]],
            "chosen_truncated": _truncated(chosen), "rejected_truncated": _truncated(rejected),
            "scores": {r["id"]: scores[r["id"]] for r in scored},
            "chosen_judge_raw": raw[chosen["id"]], "rejected_judge_raw": raw[rejected["id"]],
            "seeds": {"chosen": chosen.get("seed"), "rejected": rejected.get("seed")},
        },
    }


def confirm(pairs: list[dict], p_first: list[float | None], p_second: list[float | None]) -> tuple[list, int]:
    """Keep the pairs the judge confirms in both orders: P(A) > 0.5 with chosen shown as A, and < 0.5 with
    chosen shown as B. Returns (kept pairs, number dropped)."""
    kept = []
    for pair, a_first, a_second in zip(pairs, p_first, p_second):
        pair["provenance"]["confirmation"] = {"p_chosen_as_a": a_first,
                                              "p_chosen_as_b": None if a_second is None else 1 - a_second}
        if a_first is not None and a_second is not None and a_first > 0.5 and a_second < 0.5:
            kept.append(pair)
    return kept, len(pairs) - len(kept)
