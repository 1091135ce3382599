"""What one model does on the fixed probe sets: drift samples, capability answers, and judging its own answers.

Contract: a model's probe outputs depend only on the model and the recipe (requests are seeded by probe id,
never by iteration), so iteration k reuses M(k-1)'s outputs from the eval directory of the iteration that
produced it, and iter_000/eval holds M0's. `model_side` writes `probes.jsonl` (drift set, sampled at
eval.temperature) and `capability.jsonl` (IFEval probes, greedy) and returns the model's own metrics.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import constitution
from selfreward.engine import Request, Sampling, seed_for
from selfreward.eval import capability, diversity
from selfreward.judging import judge_items
from selfreward.records import read_jsonl, run_sharded, write_jsonl


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def drift_responses(engine, cfg, adapter: str | None, shard_dir: Path, label: str) -> list[dict]:
    probes = read_jsonl(cfg.eval.probes)
    sampling = Sampling(temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)

    def work(chunk):
        outs = engine.generate([Request(_user(p["prompt"]), seed_for(cfg.run.seed, "probe", p["id"]), adapter)
                                for p in chunk], sampling)
        return [{"id": p["id"], "prompt": p["prompt"], "response": o.text, "n_tokens": o.n_tokens,
                 "finish_reason": o.finish_reason} for p, o in zip(chunk, outs)]

    return run_sharded(probes, cfg.eval.shard_size, shard_dir, "probes", work, desc=f"{label} probes")


def capability_responses(engine, cfg, adapter: str | None, shard_dir: Path, label: str,
                         rows: list[dict] | None = None, max_tokens: int | None = None) -> list[dict]:
    """Greedy answers to IFEval-format rows (the recipe's capability probes unless given)."""
    rows = rows if rows is not None else capability.read_ifeval(cfg.eval.capability_probes)
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens or cfg.eval.capability_max_tokens)

    def work(chunk):
        outs = engine.generate([Request(_user(r["prompt"]), 0, adapter) for r in chunk], sampling)
        return [{"id": str(r["key"]), "prompt": r["prompt"], "response": o.text, "n_tokens": o.n_tokens,
                 "finish_reason": o.finish_reason} for r, o in zip(chunk, outs)]

    return run_sharded(rows, cfg.eval.shard_size, shard_dir, "capability", work, desc=f"{label} capability")


def self_judge(engine, cfg, adapter: str | None, rows: list[dict], shard_dir: Path, label: str) -> dict:
    """The model judges its own probe answers: can it still judge (valid rate), does it saturate?"""
    con = constitution.load(cfg.judge.constitution)
    items = [{"id": r["id"], "instruction": r["prompt"], "response": r["response"]} for r in rows]
    judged = judge_items(engine, con, cfg.judge, items, adapter, (cfg.run.seed, "selfjudge"), run_sharded,
                         shard_dir, "selfjudge", f"{label} self-judge")
    scores = [j["score"] for j in judged if j["score"] is not None]
    return {"judge_valid_rate": len(scores) / len(judged) if judged else None,
            "judge_score_mean": sum(scores) / len(scores) if scores else None,
            "judge_saturation": sum(s >= con.score_max - 0.5 for s in scores) / len(scores) if scores else None}


def model_side(engine, cfg, adapter: str | None, out_dir: Path, label: str) -> dict:
    """Write the model's probe and capability outputs; return its own metrics."""
    drift = drift_responses(engine, cfg, adapter, out_dir / "shards", label)
    write_jsonl(out_dir / "probes.jsonl", drift)
    answers = capability_responses(engine, cfg, adapter, out_dir / "shards", label)
    write_jsonl(out_dir / "capability.jsonl", answers)
    scored = capability.score(capability.read_ifeval(cfg.eval.capability_probes), [a["response"] for a in answers])
    lengths = [r["n_tokens"] for r in drift]
    return {**diversity.summary([r["response"] for r in drift]),
            "length_mean": sum(lengths) / len(lengths),
            "truncated_rate": sum(r["finish_reason"] == "length" for r in drift) / len(drift),
            "capability": {k: v for k, v in scored.items() if k != "per_prompt"},
            "capability_per_prompt": {k: v["strict"] for k, v in scored["per_prompt"].items()},
            **self_judge(engine, cfg, adapter, drift, out_dir / "shards", label)}
