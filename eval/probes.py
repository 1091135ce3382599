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


def _items(name: str, rows: list[dict]) -> list[dict]:
    """Work items of one probe set: what a response depends on besides the model and the recipe."""
    return [{"set": name, "id": r["id"] if name == "probes" else str(r["key"]), "prompt": r["prompt"]} for r in rows]


def answer(engine, cfg, adapter: str | None, items: list[dict], shard_dir: Path, name: str, label: str,
           capability_max_tokens: int | None = None) -> list[dict]:
    """The model's responses to probe items of either set, in one batch per shard: drift probes sampled at
    eval.temperature and seeded by probe id, capability probes greedy. Rows come back in item order."""
    drift = Sampling(temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=capability_max_tokens or cfg.eval.capability_max_tokens)

    def work(chunk):
        drifts = [it["set"] == "probes" for it in chunk]
        outs = engine.generate([Request(_user(it["prompt"]), seed_for(cfg.run.seed, "probe", it["id"]) if d else 0,
                                        adapter) for it, d in zip(chunk, drifts)],
                               [drift if d else greedy for d in drifts])
        return [{"id": it["id"], "prompt": it["prompt"], "response": o.text, "n_tokens": o.n_tokens,
                 "finish_reason": o.finish_reason} for it, o in zip(chunk, outs)]

    return run_sharded(items, cfg.eval.shard_size, shard_dir, name, work, desc=f"{label} {name}")


def capability_responses(engine, cfg, adapter: str | None, shard_dir: Path, label: str,
                         rows: list[dict] | None = None, max_tokens: int | None = None) -> list[dict]:
    """Greedy answers to IFEval-format rows (the recipe's capability probes unless given)."""
    rows = rows if rows is not None else capability.read_ifeval(cfg.eval.capability_probes)
    return answer(engine, cfg, adapter, _items("capability", rows), shard_dir, "capability", label, max_tokens)


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
    ifeval = capability.read_ifeval(cfg.eval.capability_probes)
    # both sets in one pass, so the few drift probes share batches with the capability probes
    items = _items("probes", read_jsonl(cfg.eval.probes)) + _items("capability", ifeval)
    rows = answer(engine, cfg, adapter, items, out_dir / "shards", "answers", label)
    drift = [r for it, r in zip(items, rows) if it["set"] == "probes"]
    answers = [r for it, r in zip(items, rows) if it["set"] == "capability"]
    write_jsonl(out_dir / "probes.jsonl", drift)
    write_jsonl(out_dir / "capability.jsonl", answers)
    scored = capability.score(ifeval, [a["response"] for a in answers])
    lengths = [r["n_tokens"] for r in drift]
    return {**diversity.summary([r["response"] for r in drift]),
            "length_mean": sum(lengths) / len(lengths),
            "truncated_rate": sum(r["finish_reason"] == "length" for r in drift) / len(drift),
            "capability": {k: v for k, v in scored.items() if k != "per_prompt"},
            "capability_per_prompt": {k: v["strict"] for k, v in scored["per_prompt"].items()},
            **self_judge(engine, cfg, adapter, drift, out_dir / "shards", label)}
