"""data_gen: new prompts from M(k-1) (self-instruct) or from a dataset, then N sampled responses per prompt.

Contract: reads the seeds, earlier iterations' prompts and (`data_gen.source: dataset`) the dataset; writes
`prompts.jsonl` ({id, instruction, source, and round, fewshot_ids for self-instruct or dataset, dataset_row
[, dataset_id] for a dataset}; with `data_gen.constraints.share` > 0 also the IFEval input fields key, prompt,
instruction_id_list, kwargs and base_instruction, `constraints.attach`) and `responses.jsonl` ({id, prompt_id, sample, response, n_tokens,
finish_reason, seed}, plus `anchor: true` on M0's anchor responses when `data_gen.anchor_responses` asks for
them). With `data_gen.pool: accumulate` the prompts file starts with every earlier iteration's prompts
(`carried: true`), which are answered again; new prompts never repeat them. Every request is seeded by its
row, so a resumed stage produces the same rows. A local dataset file is in the identity by its sha256. New prompts
are deduplicated against the eval probes' base prompts too (the probe files are in the stage's identity).
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts, datasource, engine as engines
from selfreward.config import Config
from selfreward.data_gen import constraints
from selfreward.data_gen.prompts import from_dataset, synthesize
from selfreward.engine import Request, Sampling, seed_for
from selfreward.exits import IterationEnded
from selfreward.lifecycle import Outputs, Stage
from selfreward.digests import file_digest
from selfreward.records import read_jsonl, run_sharded, write_jsonl


def _earlier_inputs(cfg: Config, iter_dir: Path) -> dict:
    return {"earlier_prompts": [file_digest(p) for p in _earlier_prompt_files(iter_dir)]}


def _earlier_prompt_files(iter_dir: Path) -> list[Path]:
    k = artifacts.iteration_of(iter_dir)
    paths = [artifacts.iteration_dir(iter_dir.parent, j) / "data_gen" / "prompts.jsonl" for j in range(1, k)]
    return [p for p in paths if p.exists()]


def _earlier_prompts(iter_dir: Path) -> list[dict]:
    """Prompts of earlier iterations (each once, in order): new prompts must not repeat them."""
    rows: dict[str, dict] = {}
    for path in _earlier_prompt_files(iter_dir):
        for r in read_jsonl(path):
            rows.setdefault(r["id"], r)
    return list(rows.values())


def _new_prompts(cfg: Config, k: int, engine, adapter: str | None, earlier: list[dict],
                 out_dir: Path) -> tuple[list[dict], dict]:
    seeds = read_jsonl(cfg.data_gen.seeds)
    # a new prompt must not resemble a seed, an earlier prompt (its base, without attached instructions) or the
    # base prompt of any eval probe: nothing the gate measures is trained on
    seen = ([s["instruction"] for s in seeds] + [r.get("base_instruction", r["instruction"]) for r in earlier]
            + constraints.probe_bases(cfg))
    if cfg.data_gen.source == "dataset":
        used = {r["dataset_row"] for r in earlier if r.get("source") == "dataset"}
        rows = datasource.load(cfg.data_gen.dataset, cfg.run.seed)
        prompts, stats = from_dataset(cfg, k, rows, seen, used)
        what = f"no unused prompt of {cfg.data_gen.dataset.path} passed the duplicate filter"
    else:
        prompts, stats = synthesize(engine, cfg, k, seeds, seen, adapter, out_dir / "shards", run_sharded)
        what = "no synthesised instruction passed the filters"
    if not prompts:
        raise IterationEnded(f"iteration {k}: {what} ({stats['candidates']} candidates, "
                             f"rejected: {stats['rejected']})")
    return prompts, stats


def run(cfg: Config, iter_dir: Path) -> Outputs:
    out_dir = iter_dir / "data_gen"
    k = artifacts.iteration_of(iter_dir)
    adapter = artifacts.parent_adapter(iter_dir)
    engine = engines.for_config(cfg)
    earlier = _earlier_prompts(iter_dir)
    prompts, pstats = _new_prompts(cfg, k, engine, adapter, earlier, out_dir)
    if cfg.data_gen.pool == "accumulate":
        prompts = [{**r, "carried": True} for r in earlier] + prompts
    prompts = constraints.attach(prompts, cfg, k)
    pstats["constrained"] = sum(bool(p.get("instruction_id_list")) for p in prompts if not p.get("carried"))
    pstats["pool"] = len(prompts)
    write_jsonl(out_dir / "prompts.jsonl", prompts)

    dg = cfg.data_gen
    sampling = Sampling(temperature=dg.temperature, top_p=dg.top_p, max_tokens=dg.max_tokens)
    # N samples of M(k-1), then (for anchored rejection) M0's anchor samples, numbered after them
    slots = [(p, s) for p in prompts for s in range(dg.n_responses + dg.anchor_responses)]
    m0 = artifacts.m0_adapter(iter_dir.parent)  # M0 (the SFT bootstrap's adapter, if any) writes the anchors

    def work(chunk):
        reqs = [Request([{"role": "user", "content": p["instruction"]}],
                        seed_for(cfg.run.seed, k, "response", p["id"], s),
                        adapter if s < dg.n_responses else m0) for p, s in chunk]
        outs = engine.generate(reqs, sampling)
        rows = []
        for (p, s), r, o in zip(chunk, reqs, outs):
            row = {"id": f"{p['id']}-r{s}", "prompt_id": p["id"], "sample": s, "response": o.text,
                   "n_tokens": o.n_tokens, "finish_reason": o.finish_reason, "seed": r.seed}
            if s >= dg.n_responses:
                row["anchor"] = True  # written by M0 whatever the iteration
            rows.append(row)
        return rows

    responses = run_sharded(slots, dg.shard_size, out_dir / "shards", "responses", work,
                            desc=f"iter {k} responses")
    write_jsonl(out_dir / "responses.jsonl", responses)
    n_tok = [r["n_tokens"] for r in responses]
    metrics = {**{f"prompts_{key}": v for key, v in pstats.items()}, "dtype": engine.dtype,
               "responses": len(responses), "response_tokens_mean": round(sum(n_tok) / len(n_tok), 2),
               "truncated_rate": round(sum(r["finish_reason"] == "length" for r in responses) / len(responses), 4)}
    return Outputs({"prompts": out_dir / "prompts.jsonl", "responses": out_dir / "responses.jsonl"}, metrics)


def summary(m: dict) -> str:
    x = m["metrics"]
    pool = x.get("prompts_pool", x["prompts_accepted"])
    carried = f" + {pool - x['prompts_accepted']} carried" if pool != x["prompts_accepted"] else ""
    source = " from the dataset" if "prompts_pool_rows" in x else ""
    constrained = f", {x['prompts_constrained']} with constraints" if x.get("prompts_constrained") else ""
    return (f"data_gen: {x['prompts_accepted']} prompts{source}{carried}{constrained} ({x['prompts_candidates']} candidates, "
            f"acceptance {x['prompts_acceptance_rate']:.0%}), {x['responses']} responses, "
            f"{x['response_tokens_mean']:.0f} tokens mean, {x['truncated_rate']:.0%} truncated, {x['dtype']}")


STAGE = Stage("data_gen", reads=("data_gen", "model", "run.seed", "eval.probes", "eval.capability_probes"), run=run, summary=summary, lineage=True,
              extra=_earlier_inputs)
