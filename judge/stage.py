"""judge: M(k-1) scores every candidate under the constitution, then best-vs-worst pairs are built.

Contract: reads data_gen's prompts and responses; writes `judgments.jsonl` (raw text always kept, score None
when it does not parse), `pairs.jsonl` (TRL's conversational preference format plus `provenance`) and
`stats.json`.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts, engine as engines
from selfreward.config import Config
from selfreward.engine import Sampling, seed_for
from selfreward.judge.pairs import build_pairs
from selfreward.judging import judge_request, parse_score, read_template
from selfreward.lifecycle import Outputs, Stage
from selfreward.models import file_digest
from selfreward.records import read_jsonl, run_sharded, write_json, write_jsonl


def run(cfg: Config, iter_dir: Path) -> Outputs:
    out_dir = iter_dir / "judge"
    k = artifacts.iteration_of(iter_dir)
    adapter = artifacts.parent_adapter(iter_dir)
    engine = engines.for_config(cfg)
    prompts = read_jsonl(iter_dir / "data_gen" / "prompts.jsonl")
    responses = read_jsonl(iter_dir / "data_gen" / "responses.jsonl")
    instruction = {p["id"]: p["instruction"] for p in prompts}
    template = read_template(cfg.judge.constitution)
    jc = cfg.judge
    sampling = Sampling(temperature=jc.temperature, top_p=1.0, max_tokens=jc.max_tokens)
    slots = [(r, n) for r in responses for n in range(jc.num_judgments)]

    def work(chunk):
        reqs = [judge_request(template, instruction[r["prompt_id"]], r["response"],
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
                  "constitution_sha256": file_digest(cfg.judge.constitution).removeprefix("sha256:"),
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
    return Outputs(outputs, metrics)


def summary(m: dict) -> str:
    x = m["metrics"]
    mean = f"{x['score_mean']:.2f}" if x["score_mean"] is not None else "n/a"
    return (f"judge: {x['parsed']}/{x['judgments']} judgments parsed ({x['parse_rate']:.0%}), "
            f"mean score {mean}, {x['pairs']} pairs from {x['prompts']} prompts "
            f"(dropped: {', '.join(f'{k} {v}' for k, v in x['dropped'].items())})")


STAGE = Stage("judge", reads=("judge", "model", "run.seed"), run=run, summary=summary, upstream=("data_gen",),
              lineage=True)
