"""Preference pairs: per prompt, chosen = best-scored response, rejected = worst. Ties never pair."""
from __future__ import annotations


def mean_scores(judgments: list[dict]) -> dict[str, float]:
    """Average of the valid scores per response; a response with no valid judgment gets no score."""
    sums: dict[str, list[float]] = {}
    for j in judgments:
        if j["score"] is not None:
            sums.setdefault(j["response_id"], []).append(j["score"])
    return {rid: sum(v) / len(v) for rid, v in sums.items()}


def build_pairs(prompts: list[dict], responses: list[dict], judgments: list[dict], min_margin: float,
                provenance: dict) -> tuple[list[dict], dict]:
    scores = mean_scores(judgments)
    raw: dict[str, list[str]] = {}
    for j in judgments:
        raw.setdefault(j["response_id"], []).append(j["raw"])
    by_prompt: dict[str, list[dict]] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs, dropped = [], {"fewer_than_two_scored": 0, "tie": 0, "below_margin": 0}
    for p in prompts:
        scored = sorted((r for r in by_prompt.get(p["id"], []) if r["id"] in scores), key=lambda r: r["sample"])
        if len(scored) < 2:
            dropped["fewer_than_two_scored"] += 1
            continue
        # first best and first worst by sample index: deterministic when several share a score
        best = max(scored, key=lambda r: scores[r["id"]])
        worst = min(scored, key=lambda r: scores[r["id"]])
        margin = scores[best["id"]] - scores[worst["id"]]
        if margin == 0:
            dropped["tie"] += 1
            continue
        if margin < min_margin:
            dropped["below_margin"] += 1
            continue
        pairs.append({
            "prompt": [{"role": "user", "content": p["instruction"]}],
            "chosen": [{"role": "assistant", "content": best["response"]}],
            "rejected": [{"role": "assistant", "content": worst["response"]}],
            "provenance": {
                **provenance,
                "prompt_id": p["id"], "source": p.get("source", "self-instruct"),
                "chosen_id": best["id"], "rejected_id": worst["id"],
                "chosen_score": scores[best["id"]], "rejected_score": scores[worst["id"]],
                "scores": {r["id"]: scores[r["id"]] for r in scored},
                "chosen_judge_raw": raw[best["id"]], "rejected_judge_raw": raw[worst["id"]],
                "seeds": {"chosen": best.get("seed"), "rejected": worst.get("seed")},
            },
        })
    return pairs, dropped
