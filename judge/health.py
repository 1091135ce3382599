"""Judge health of one iteration: is the judge valid, saturated, length-biased, consistent, right on known answers?

Contract: `summarise` turns the stage's judgments, pairs and checks into the numbers written to `stats.json`
(and the manifest's metrics); it reads nothing from disk.
"""
from __future__ import annotations

from collections import Counter

from selfreward.stats import kendall_tau_b, spearman


def _histogram(values: list[float]) -> dict[str, int]:
    """Counts by the nearest whole score (logprob scores are expectations, not integers)."""
    counts = Counter(int(round(v)) for v in values)
    return {str(k): counts[k] for k in sorted(counts)}


def consistency(current: dict[str, float], previous: dict[str, float] | None) -> dict:
    """Kendall's tau-b between this iteration's judge and the previous iteration's on the same fixed responses."""
    if not previous:
        return {"kendall_tau": None, "n": 0}
    shared = sorted(set(current) & set(previous))
    return {"kendall_tau": kendall_tau_b([current[i] for i in shared], [previous[i] for i in shared]),
            "n": len(shared)}


def summarise(con, judgments: list[dict], scores: dict[str, float], responses: list[dict], prompts: list[dict],
              pairs: list[dict], dropped: dict, known: dict, consistent: dict) -> dict:
    valid = [j["score"] for j in judgments if j["score"] is not None]
    invalid = Counter(j["invalid"] for j in judgments if j["score"] is None)
    mean_scores = list(scores.values())
    scored = [r for r in responses if r["id"] in scores and not r.get("anchor")]
    by_prompt: dict[str, list[float]] = {}
    for r in scored:
        by_prompt.setdefault(r["prompt_id"], []).append(scores[r["id"]])
    multi = [v for v in by_prompt.values() if len(v) >= 2]
    margins = [p["provenance"]["chosen_score"] - p["provenance"]["rejected_score"] for p in pairs]
    return {
        "constitution": {"name": con.name, "version": con.version, "sha256": con.sha256, "scoring": con.scoring},
        "judgments": len(judgments), "valid": len(valid),
        "valid_rate": round(len(valid) / max(len(judgments), 1), 4), "invalid_reasons": dict(invalid),
        "score_mean": round(sum(valid) / len(valid), 4) if valid else None,
        "score_histogram": _histogram(valid),
        "top_score_share": round(sum(s >= con.score_max - 0.5 for s in mean_scores) / len(mean_scores), 4)
        if mean_scores else None,
        "tie_rate": round(sum(max(v) == min(v) for v in multi) / len(multi), 4) if multi else None,
        "prompts": len(prompts), "pairs": len(pairs), "pair_yield": round(len(pairs) / max(len(prompts), 1), 4),
        "dropped": dropped,
        "margin_mean": round(sum(margins) / len(margins), 4) if margins else None,
        "truncated_pair_share": round(sum(p["provenance"]["chosen_truncated"] or p["provenance"]["rejected_truncated"]
                                          for p in pairs) / len(pairs), 4) if pairs else None,
        "length_bias_spearman": spearman([scores[r["id"]] for r in scored], [r["n_tokens"] for r in scored]),
        "known_answer": known,
        "consistency": consistent,
    }
