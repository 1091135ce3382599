"""The frozen judge's both-order preference between the candidate and the previous model.

Contract: `win_rate` asks the frozen judge M0 (the base model, or base + the SFT bootstrap's adapter; greedy)
to compare the candidate's and the previous model's answers to the same probe in both orders; per probe, the
candidate's preference probability is P(A | candidate shown as A) and 1 - P(A | candidate shown as B),
averaged, so a constant position bias cancels. It returns the mean with a paired bootstrap 95% interval over
probes, and the greedy verdicts beside it.
"""
from __future__ import annotations

from pathlib import Path

from selfreward.engine import Sampling
from selfreward.judging import TOP_LOGPROBS, pairwise_request, parse_winner, preference_a, read_template
from selfreward.records import run_sharded
from selfreward.stats import bootstrap_mean


def both_order_outcome(winner_ab: str | None, winner_ba: str | None) -> float | None:
    """Candidate shown as A then as B. 1 = candidate wins both orders, 0.5 = split (position bias),
    0 = previous wins both; None when either judgment did not parse."""
    if winner_ab is None or winner_ba is None:
        return None
    return ((winner_ab == "A") + (winner_ba == "B")) / 2


def both_order_probability(p_a_when_first: float | None, p_a_when_second: float | None) -> float | None:
    """Candidate's preference probability averaged over both orders: P(A | candidate is A) and
    P(B | candidate is B) = 1 - P(A | candidate is B). A constant position bias cancels out."""
    if p_a_when_first is None or p_a_when_second is None:
        return None
    return (p_a_when_first + 1 - p_a_when_second) / 2


def _mean(values):
    return sum(values) / len(values) if values else None


def win_rate(engine, cfg, cand: list[dict], prev: list[dict], shard_dir: Path, label: str,
             judge_adapter: str | None = None) -> dict:
    """cand and prev: rows {id, prompt, response} in the same probe order; the judge is M0 (base model, or
    `judge_adapter`: the SFT bootstrap's adapter)."""
    template = read_template(cfg.eval.pairwise_template)
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=cfg.eval.judge_max_tokens, top_logprobs=TOP_LOGPROBS)
    slots = [(c, p, order) for c, p in zip(cand, prev) for order in ("AB", "BA")]

    def work(chunk):
        reqs = []
        for c, p, order in chunk:
            a, b = (c, p) if order == "AB" else (p, c)
            reqs.append(pairwise_request(template, c["prompt"], a["response"], b["response"], cfg.eval.judge_prefill,
                                         judge_adapter))
        outs = engine.generate(reqs, sampling)
        raws = [cfg.eval.judge_prefill + o.text for o in outs]
        return [{"id": c["id"], "order": order, "raw": raw, "winner": parse_winner(raw),
                 "p_a": preference_a(o.first_token_logprobs)} for (c, _, order), raw, o in zip(chunk, raws, outs)]

    judged = run_sharded(slots, cfg.eval.shard_size, shard_dir, "pairwise", work, desc=f"{label} win rate")
    by_id: dict[str, dict] = {}
    for j in judged:
        by_id.setdefault(j["id"], {})[j["order"]] = j
    verdicts = [both_order_outcome(v["AB"]["winner"], v["BA"]["winner"]) for v in by_id.values()]
    decided = [o for o in verdicts if o is not None]
    probs = [both_order_probability(v["AB"]["p_a"], v["BA"]["p_a"]) for v in by_id.values()]
    probs = [p for p in probs if p is not None]
    lo, hi = bootstrap_mean(probs, seed=cfg.run.seed)
    return {"win_rate": _mean(probs), "win_rate_ci95": [lo, hi], "win_rate_n": len(probs),
            "win_rate_verdicts": _mean(decided), "win_rate_verdicts_n": len(decided),
            "pairwise_parse_rate": sum(j["winner"] is not None for j in judged) / len(judged) if judged else None,
            "position_consistency": sum(o != 0.5 for o in decided) / len(decided) if decided else None}
