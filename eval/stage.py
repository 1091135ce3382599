"""eval: the candidate M(k) against M(k-1) on the fixed probe set, then the gate's decision.

Contract: probe samples are seeded by probe id only, so a model's probe responses are the same in every
iteration; iteration k reuses M(k-1)'s from the iteration that produced it (iter_000/eval holds M0's baseline,
the `BASELINE` stage). Writes `probes.jsonl`, `metrics.json` and, for k >= 1, the gate's `decision.json`.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts, engine as engines
from selfreward.config import Config
from selfreward.engine import Request, Sampling, ScoreRequest, seed_for
from selfreward.eval import gate
from selfreward.eval.metrics import both_order_outcome, both_order_probability, distinct_n, kl_estimate, mean
from selfreward import constitution
from selfreward.judging import (TOP_LOGPROBS, judge_items, pairwise_request, parse_winner, preference_a,
                                read_template)
from selfreward.lifecycle import Outputs, Stage
from selfreward.records import read_json, read_jsonl, run_sharded, write_json, write_jsonl

# what decides a model's probe responses and its self-judging of them
JUDGING_KEYS = tuple(f"judge.{k}" for k in ("constitution", "mode", "format", "structured", "num_judgments",
                                             "temperature", "max_tokens", "reason_max_chars", "min_score_mass"))
PROBE_KEYS = ("eval.probes", "eval.temperature", "eval.max_tokens", *JUDGING_KEYS, "model", "run.seed")


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def probe_responses(engine, cfg: Config, adapter: str | None, shard_dir: Path, label: str) -> list[dict]:
    probes = read_jsonl(cfg.eval.probes)
    sampling = Sampling(temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)

    def work(chunk):
        outs = engine.generate([Request(_user(p["prompt"]), seed_for(cfg.run.seed, "probe", p["id"]), adapter)
                                for p in chunk], sampling)
        return [{"id": p["id"], "prompt": p["prompt"], "response": o.text, "n_tokens": o.n_tokens,
                 "finish_reason": o.finish_reason} for p, o in zip(chunk, outs)]

    return run_sharded(probes, cfg.eval.shard_size, shard_dir, "probes", work, desc=f"{label} probes")


def self_judge(engine, cfg: Config, adapter: str | None, rows: list[dict], shard_dir: Path, label: str) -> dict:
    """The model judges its own probe responses: can it still judge (parse rate), does it saturate?"""
    con = constitution.load(cfg.judge.constitution)
    items = [{"id": r["id"], "instruction": r["prompt"], "response": r["response"]} for r in rows]
    judged = judge_items(engine, con, cfg.judge, items, adapter, (cfg.run.seed, "selfjudge"), run_sharded,
                         shard_dir, "selfjudge", f"{label} self-judge")
    scores = [j["score"] for j in judged if j["score"] is not None]
    return {"judge_valid_rate": len(scores) / len(judged) if judged else None,
            "judge_score_mean": mean(scores),
            "judge_saturation": sum(s >= con.score_max - 0.5 for s in scores) / len(scores) if scores else None}


def _side_metrics(rows: list[dict]) -> dict:
    return {"distinct2": distinct_n([r["response"] for r in rows]),
            "length_mean": mean([r["n_tokens"] for r in rows]),
            "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}


def baseline(cfg: Config, iter_dir: Path) -> Outputs:
    """iter_000/eval: M0's probe responses and self-judging, the reference point for iteration 1."""
    out_dir = iter_dir / "eval"
    engine = engines.for_config(cfg)
    rows = probe_responses(engine, cfg, None, out_dir / "shards", "M0")
    write_jsonl(out_dir / "probes.jsonl", rows)
    metrics = {**_side_metrics(rows), **self_judge(engine, cfg, None, rows, out_dir / "shards", "M0")}
    write_json(out_dir / "metrics.json", metrics)
    return Outputs({"probes": out_dir / "probes.jsonl", "metrics": out_dir / "metrics.json"}, metrics)


def pairwise(engine, cfg: Config, cand: list[dict], prev: list[dict], shard_dir: Path, k: int) -> dict:
    """The frozen M0 judge compares candidate and previous in both orders, so position bias cancels."""
    template = read_template(cfg.eval.pairwise_template)
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=cfg.eval.judge_max_tokens, top_logprobs=TOP_LOGPROBS)
    slots = [(c, p, order) for c, p in zip(cand, prev) for order in ("AB", "BA")]

    def work(chunk):
        reqs = []
        for c, p, order in chunk:
            a, b = (c, p) if order == "AB" else (p, c)
            reqs.append(pairwise_request(template, c["prompt"], a["response"], b["response"], cfg.eval.judge_prefill))
        outs = engine.generate(reqs, sampling)
        raws = [cfg.eval.judge_prefill + o.text for o in outs]
        return [{"id": c["id"], "order": order, "raw": raw, "winner": parse_winner(raw),
                 "p_a": preference_a(o.first_token_logprobs)} for (c, _, order), raw, o in zip(chunk, raws, outs)]

    judged = run_sharded(slots, cfg.eval.shard_size, shard_dir, "pairwise", work, desc=f"iter {k} win rate")
    by_id: dict[str, dict] = {}
    for j in judged:
        by_id.setdefault(j["id"], {})[j["order"]] = j
    verdicts = [both_order_outcome(v["AB"]["winner"], v["BA"]["winner"]) for v in by_id.values()]
    decided = [o for o in verdicts if o is not None]
    probs = [both_order_probability(v["AB"]["p_a"], v["BA"]["p_a"]) for v in by_id.values()]
    probs = [p for p in probs if p is not None]
    return {"win_rate": mean(probs), "win_rate_n": len(probs),
            "win_rate_verdicts": mean(decided), "win_rate_verdicts_n": len(decided),
            "pairwise_parse_rate": sum(j["winner"] is not None for j in judged) / len(judged),
            "position_consistency": sum(o != 0.5 for o in decided) / len(decided) if decided else None}


def run(cfg: Config, iter_dir: Path) -> Outputs:
    out_dir = iter_dir / "eval"
    k = artifacts.iteration_of(iter_dir)
    lin = artifacts.lineage(iter_dir)
    engine = engines.for_config(cfg)
    adapter = str((iter_dir / "train" / "adapter").resolve())
    prev = read_jsonl(artifacts.iteration_dir(iter_dir.parent, lin["parent_iteration"]) / "eval" / "probes.jsonl")
    prev_metrics = read_json(artifacts.iteration_dir(iter_dir.parent, lin["parent_iteration"]) / "eval" /
                             "metrics.json")
    cand = probe_responses(engine, cfg, adapter, out_dir / "shards", f"iter {k}")
    write_jsonl(out_dir / "probes.jsonl", cand)
    side = _side_metrics(cand)
    judged = self_judge(engine, cfg, adapter, cand, out_dir / "shards", f"iter {k}")
    parent = artifacts.parent_adapter(iter_dir)
    msgs = [(_user(c["prompt"]), c["response"]) for c in cand]
    lp_c = engine.score([ScoreRequest(m, r, adapter) for m, r in msgs])
    lp_p = engine.score([ScoreRequest(m, r, parent) for m, r in msgs])
    kl_seq, kl_tok = kl_estimate(lp_c, lp_p)
    metrics = {**side, **judged, **pairwise(engine, cfg, cand, prev, out_dir / "shards", k),
               "kl_per_sequence": kl_seq, "kl_per_token": kl_tok,
               "previous": {key: prev_metrics[key] for key in ("distinct2", "length_mean", "judge_valid_rate",
                                                                "judge_saturation")},
               "length_ratio": side["length_mean"] / max(prev_metrics["length_mean"], 1e-9),
               "distinct2_ratio": side["distinct2"] / max(prev_metrics["distinct2"], 1e-9),
               "judge_valid_rate_delta": judged["judge_valid_rate"] - prev_metrics["judge_valid_rate"]}
    decision = gate.decide(metrics, cfg.eval)
    decision.update({"iteration": k, "candidate": artifacts.adapter_path(k),
                     "previous_iteration": lin["parent_iteration"]})
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "decision.json", decision)
    flat = {key: v for key, v in metrics.items() if not isinstance(v, dict)}
    return Outputs({"probes": out_dir / "probes.jsonl", "metrics": out_dir / "metrics.json",
                    "decision": out_dir / "decision.json"}, {**flat, "gate_passed": decision["passed"]})


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(key):
        return "n/a" if x.get(key) is None else f"{x[key]:.3f}"

    return (f"eval: win rate {f('win_rate')} (n={x['win_rate_n']}), length ratio {f('length_ratio')}, "
            f"distinct-2 {f('distinct2')} (ratio {f('distinct2_ratio')}), judge valid rate "
            f"{f('judge_valid_rate')}, KL/token {f('kl_per_token')}; gate "
            f"{'PASSED' if x['gate_passed'] else 'FAILED'}")


STAGE = Stage("eval", reads=("eval", *PROBE_KEYS), run=run, summary=summary, upstream=("train",), lineage=True)
BASELINE = Stage("eval", reads=PROBE_KEYS, run=baseline, summary=lambda m: "eval: baseline M0")
