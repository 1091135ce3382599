"""Preference pairs from scored responses, by a strategy chosen in the recipe.

Contract: `build_pairs` picks at most one (chosen, rejected) per prompt and records in each pair's provenance
which strategy made it. Never a pair from: an unscored response, a tie or a margin below `min_margin`,
identical texts, or a truncated chosen response (unless `allow_truncated`). Selections:
- `best_worst` (Self-Rewarding LMs): the best-scored response against the worst;
- `length_controlled` (Meta-Rewarding): the shortest response of the top score band against the longest of the
  bottom band (bands are `length_band` wide);
- `anchored` (Temporal Self-Rewarding): the best response against the worst of M0's anchor responses.
Both-order confirmation by the judge is applied afterwards by the stage (`confirm`).
"""
from __future__ import annotations


def _truncated(r: dict) -> bool:
    return r.get("finish_reason") == "length"


def _select(jc, candidates: list[dict], anchors: list[dict], scores: dict) -> tuple[dict | None, dict | None]:
    eligible = [r for r in candidates if jc.allow_truncated or not _truncated(r)]
    if not eligible:
        return None, None
    if jc.pair_strategy == "length_controlled":
        top = max(scores[r["id"]] for r in eligible)
        bottom = min(scores[r["id"]] for r in candidates)
        chosen = min((r for r in eligible if scores[r["id"]] >= top - jc.length_band), key=lambda r: r["n_tokens"])
        rejected = max((r for r in candidates if scores[r["id"]] <= bottom + jc.length_band),
                       key=lambda r: r["n_tokens"])
        return chosen, rejected
    chosen = max(eligible, key=lambda r: scores[r["id"]])  # first best by sample index on ties
    pool = anchors if jc.pair_strategy == "anchored" else candidates
    return chosen, min(pool, key=lambda r: scores[r["id"]])


def build_pairs(prompts: list[dict], responses: list[dict], scores: dict[str, float], raw: dict[str, list],
                jc, provenance: dict) -> tuple[list[dict], dict]:
    by_prompt: dict[str, list[dict]] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs = []
    dropped = {"fewer_than_two_scored": 0, "no_complete_response": 0, "tie": 0, "below_margin": 0, "identical": 0}
    for p in prompts:
        scored = sorted((r for r in by_prompt.get(p["id"], []) if r["id"] in scores), key=lambda r: r["sample"])
        candidates = [r for r in scored if not r.get("anchor")]
        anchors = [r for r in scored if r.get("anchor")]
        if len(candidates) + (len(anchors) if jc.pair_strategy == "anchored" else 0) < 2 or not candidates or \
                jc.pair_strategy == "anchored" and not anchors:
            dropped["fewer_than_two_scored"] += 1
            continue
        chosen, rejected = _select(jc, candidates, anchors, scores)
        if chosen is None:
            dropped["no_complete_response"] += 1
            continue
        margin = scores[chosen["id"]] - scores[rejected["id"]]
        reason = ("tie" if margin <= 0 else "below_margin" if margin < jc.min_margin else
                  "identical" if chosen["response"].strip() == rejected["response"].strip() else None)
        if reason:
            dropped[reason] += 1
            continue
        pairs.append({
            "prompt": [{"role": "user", "content": p["instruction"]}],
            "chosen": [{"role": "assistant", "content": chosen["response"]}],
            "rejected": [{"role": "assistant", "content": rejected["response"]}],
            "provenance": {
                **provenance,
                "prompt_id": p["id"], "source": p.get("source", "self-instruct"),
                "strategy": {"selection": jc.pair_strategy, "min_margin": jc.min_margin,
                             "allow_truncated": jc.allow_truncated, "confirm_both_orders": jc.confirm_both_orders},
                "chosen_id": chosen["id"], "rejected_id": rejected["id"],
                "chosen_score": scores[chosen["id"]], "rejected_score": scores[rejected["id"]],
                "chosen_truncated": _truncated(chosen), "rejected_truncated": _truncated(rejected),
                "scores": {r["id"]: scores[r["id"]] for r in scored},
                "chosen_judge_raw": raw[chosen["id"]], "rejected_judge_raw": raw[rejected["id"]],
                "seeds": {"chosen": chosen.get("seed"), "rejected": rejected.get("seed")},
            },
        })
    return pairs, dropped


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
