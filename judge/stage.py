"""judge: M(k-1) scores every candidate under the constitution, then best-vs-worst pairs are built."""
from __future__ import annotations

import time
from pathlib import Path

from judge.pairs import build_pairs
from selfreward.rubric import parse_score
from selfreward import artifacts, engine as engines
from selfreward.config import Config
from selfreward.engine import Request, Sampling, seed_for
from selfreward.records import read_json, read_jsonl, run_sharded, write_json, write_jsonl


def stage_config(cfg: Config, iter_dir: Path) -> dict:
    j = cfg.judge.model_dump(mode="json")
    j["constitution"] = artifacts.file_digest(cfg.judge.constitution)
    j.pop("shard_size")
    upstream = read_json(iter_dir / "data_gen" / "manifest.json")["config_hash"]
    return {"judge": j, "data_gen": upstream, "seed": cfg.run.seed}


def run(cfg: Config, iter_dir: Path, force: bool = False) -> dict:
    out_dir = iter_dir / "judge"
    config = stage_config(cfg, iter_dir)
    done = artifacts.existing(out_dir, config, force)
    if done:
        return done
    started = time.time()
    k = artifacts.iteration_of(iter_dir)
    adapter = artifacts.parent_adapter(iter_dir)
    engine = engines.for_config(cfg)
    prompts = read_jsonl(iter_dir / "data_gen" / "prompts.jsonl")
    responses = read_jsonl(iter_dir / "data_gen" / "responses.jsonl")
    instruction = {p["id"]: p["instruction"] for p in prompts}
    template = Path(cfg.judge.constitution).read_text()
    jc = cfg.judge
    sampling = Sampling(temperature=jc.temperature, top_p=1.0, max_tokens=jc.max_tokens)
    slots = [(r, n) for r in responses for n in range(jc.num_judgments)]

    def work(chunk):
        reqs = [Request([{"role": "user", "content": template.format(instruction=instruction[r["prompt_id"]],
                                                                     response=r["response"])}],
                        seed_for(cfg.run.seed, k, "judge", r["id"], n), adapter, jc.prefill) for r, n in chunk]
        outs = engine.generate(reqs, sampling)
        return [{"response_id": r["id"], "prompt_id": r["prompt_id"], "judgment": n, "raw": jc.prefill + o.text,
                 "score": parse_score(jc.prefill + o.text), "finish_reason": o.finish_reason}
                for (r, n), o in zip(chunk, outs)]

    judgments = run_sharded(slots, jc.shard_size, out_dir / "shards", "judgments", work, desc=f"iter {k} judge")
    write_jsonl(out_dir / "judgments.jsonl", judgments)

    lin = artifacts.lineage(iter_dir)
    model_ref = cfg.model.ref + (f"+{lin['parent_adapter']}" if lin["parent_adapter"] else "")
    provenance = {"generator": model_ref, "judge": model_ref, "iteration": k,
                  "constitution_sha256": config["judge"]["constitution"].removeprefix("sha256:"),
                  "sampling": {"temperature": cfg.data_gen.temperature, "top_p": cfg.data_gen.top_p,
                               "max_tokens": cfg.data_gen.max_tokens}}
    pairs, dropped = build_pairs(prompts, responses, judgments, jc.min_margin, provenance)
    write_jsonl(out_dir / "pairs.jsonl", pairs)

    valid = [j["score"] for j in judgments if j["score"] is not None]
    histogram = {str(s): sum(1 for v in valid if v == s) for s in sorted(set(valid))}
    stats = {"judgments": len(judgments), "parsed": len(valid),
             "parse_rate": round(len(valid) / max(len(judgments), 1), 4),
             "score_mean": round(sum(valid) / len(valid), 4) if valid else None,
             "score_histogram": histogram, "pairs": len(pairs), "prompts": len(prompts),
             "dropped": dropped,
             "margin_mean": round(sum(p["provenance"]["chosen_score"] - p["provenance"]["rejected_score"]
                                      for p in pairs) / len(pairs), 4) if pairs else None}
    write_json(out_dir / "stats.json", stats)
    outputs = {"judgments": out_dir / "judgments.jsonl", "pairs": out_dir / "pairs.jsonl",
               "stats": out_dir / "stats.json"}
    metrics = {key: v for key, v in stats.items() if key != "score_histogram"}
    return artifacts.write_manifest(out_dir, "judge", config, outputs, metrics, started)


def summary(m: dict) -> str:
    x = m["metrics"]
    mean = f"{x['score_mean']:.2f}" if x["score_mean"] is not None else "n/a"
    return (f"judge: {x['parsed']}/{x['judgments']} judgments parsed ({x['parse_rate']:.0%}), "
            f"mean score {mean}, {x['pairs']} pairs from {x['prompts']} prompts "
            f"(dropped: {', '.join(f'{k} {v}' for k, v in x['dropped'].items())})")
