"""judge: M(k-1) scores every candidate under the constitution, pairs are built, and the judge is checked.

Contract: reads data_gen's prompts and responses (and M0's baseline probe responses, the fixed set on which
consecutive judges are compared); writes
- `judgments.jsonl`: one row per (response, sample): score or None with why, raw text, constitution sha256;
- `pairs.jsonl`: TRL's conversational preference format plus `provenance` (strategy, scores, raw judge texts,
  truncation of each side, constitution sha256, generator and judge);
- `known_answer.jsonl`: original vs corrupted checks with both scores;
- `consistency.jsonl`: this judge's scores of the fixed set;
- `stats.json`: judge health (valid rate, histogram, top-score share, ties, yield, margin, length bias,
  known-answer accuracy with intervals, Kendall tau with the previous iteration's judge) and, with
  `judge.verify: ifeval`, the verifier's pass rates, which signal decided the pairs, and the self-judge's
  agreement with the verifier (`judge/verify.py`); the verdicts are stored on the judgments too.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts, constitution, engine as engines
from selfreward.config import Config
from selfreward.engine import Sampling
from selfreward.judge import health, known_answer, verify
from selfreward.judge.pairs import build_pairs, confirm
from selfreward.judging import TOP_LOGPROBS, judge_items, mean_scores, pairwise_request, preference_a, read_template
from selfreward.lifecycle import Outputs, Stage
from selfreward.digests import file_digest
from selfreward.records import read_jsonl, run_sharded, write_json, write_jsonl


def _fixed_set(iter_dir: Path) -> Path:
    return artifacts.iteration_dir(iter_dir.parent, 0) / "eval" / "probes.jsonl"


def _previous_consistency(iter_dir: Path) -> Path:
    k = artifacts.iteration_of(iter_dir)
    return artifacts.iteration_dir(iter_dir.parent, k - 1) / "judge" / "consistency.jsonl"


def _other_inputs(cfg: Config, iter_dir: Path) -> dict:
    files = {"fixed_set": _fixed_set(iter_dir), "previous_judge": _previous_consistency(iter_dir)}
    return {key: file_digest(p) if p.exists() else None for key, p in files.items()}


def _confirm(engine, cfg: Config, pairs: list[dict], adapter, out_dir: Path, k: int) -> tuple[list[dict], int]:
    """The same judge compares chosen and rejected in both orders; unconfirmed pairs are dropped."""
    template = read_template(cfg.eval.pairwise_template)
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=1, top_logprobs=TOP_LOGPROBS)
    slots = [(i, order) for i in range(len(pairs)) for order in ("chosen_first", "chosen_second")]

    def work(chunk):
        reqs = []
        for i, order in chunk:
            p = pairs[i]
            a, b = p["chosen"][0]["content"], p["rejected"][0]["content"]
            a, b = (a, b) if order == "chosen_first" else (b, a)
            reqs.append(pairwise_request(template, p["prompt"][0]["content"], a, b, cfg.eval.judge_prefill, adapter))
        outs = engine.generate(reqs, sampling)
        return [{"pair": i, "order": order, "p_a": preference_a(o.first_token_logprobs)}
                for (i, order), o in zip(chunk, outs)]

    rows = run_sharded(slots, cfg.judge.shard_size, out_dir / "shards", "confirm", work, desc=f"iter {k} confirm")
    p_a = {(r["pair"], r["order"]): r["p_a"] for r in rows}
    return confirm(pairs, [p_a[(i, "chosen_first")] for i in range(len(pairs))],
                   [p_a[(i, "chosen_second")] for i in range(len(pairs))])


def _judge_checks(engine, cfg, con, prompts, responses, adapter, out_dir: Path, k: int) -> dict:
    """Known-answer accuracy and consistency with the previous judge, both written next to the judgments."""
    checks = known_answer.build(prompts, responses, cfg.judge.known_answer_pairs, cfg.run.seed + k)
    judged = judge_items(engine, con, cfg.judge, known_answer.items(checks), adapter, (cfg.run.seed, k, "known"),
                         run_sharded, out_dir / "shards", "known", f"iter {k} known-answer") if checks else []
    scores = mean_scores(judged)
    write_jsonl(out_dir / "known_answer.jsonl", [{**c, "original_score": scores.get(f"{c['id']}-original"),
                                                  "corrupted_score": scores.get(f"{c['id']}-corrupted")}
                                                 for c in checks])
    fixed = [{"id": r["id"], "instruction": r["prompt"], "response": r["response"]}
             for r in read_jsonl(_fixed_set(out_dir.parent))]
    current = mean_scores(judge_items(engine, con, cfg.judge, fixed, adapter, (cfg.run.seed, "consistency"),
                                      run_sharded, out_dir / "shards", "consistency", f"iter {k} consistency"))
    write_jsonl(out_dir / "consistency.jsonl", [{"id": i, "score": s} for i, s in sorted(current.items())])
    prev_path = _previous_consistency(out_dir.parent)
    previous = {r["id"]: r["score"] for r in read_jsonl(prev_path)} if prev_path.exists() else None
    return {"known": known_answer.accuracy(checks, scores), "consistency": health.consistency(current, previous)}


def run(cfg: Config, iter_dir: Path) -> Outputs:
    out_dir = iter_dir / "judge"
    k = artifacts.iteration_of(iter_dir)
    adapter = artifacts.parent_adapter(iter_dir)
    engine = engines.for_config(cfg)
    con = constitution.load(cfg.judge.constitution)
    prompts = read_jsonl(iter_dir / "data_gen" / "prompts.jsonl")
    responses = read_jsonl(iter_dir / "data_gen" / "responses.jsonl")
    instruction = {p["id"]: p["instruction"] for p in prompts}
    items = [{"id": r["id"], "prompt_id": r["prompt_id"], "instruction": instruction[r["prompt_id"]],
              "response": r["response"]} for r in responses]
    judgments = judge_items(engine, con, cfg.judge, items, adapter, (cfg.run.seed, k, "judge"), run_sharded,
                            out_dir / "shards", "judgments", f"iter {k} judge")
    found = verify.verdicts(prompts, responses) if cfg.judge.verify == "ifeval" else None
    if found:  # the verifier's verdicts are stored on the judgments of the response they check
        judgments = [{**j, "verdict": found[j["response_id"]]} if j["response_id"] in found else j for j in judgments]
    write_jsonl(out_dir / "judgments.jsonl", judgments)

    lin = artifacts.lineage(iter_dir)
    model_ref = cfg.model.ref + (f"+{lin['parent_adapter']}" if lin["parent_adapter"] else "")
    provenance = {"generator": model_ref, "judge": model_ref, "iteration": k, "constitution_sha256": con.sha256,
                  "judge_mode": cfg.judge.mode,
                  "sampling": {"temperature": cfg.data_gen.temperature, "top_p": cfg.data_gen.top_p,
                               "max_tokens": cfg.data_gen.max_tokens}}
    raw: dict[str, list] = {}
    for j in judgments:
        raw.setdefault(j["response_id"], []).append(j["raw"])
    scores = mean_scores(judgments)
    reward = verify.rewarded(found, responses, cfg.judge, (cfg.run.seed, k)) if found is not None else None
    pairs, dropped = build_pairs(prompts, responses, scores, raw, cfg.judge, provenance, reward,
                                 (con.score_min, con.score_max))
    if cfg.judge.confirm_both_orders and pairs:
        pairs, dropped["unconfirmed"] = _confirm(engine, cfg, pairs, adapter, out_dir, k)
    write_jsonl(out_dir / "pairs.jsonl", pairs)

    checks = _judge_checks(engine, cfg, con, prompts, responses, adapter, out_dir, k)
    stats = health.summarise(con, judgments, scores, responses, prompts, pairs, dropped, checks["known"],
                             checks["consistency"])
    if found is not None:
        stats["verifier"] = {**verify.summary(found, responses, prompts), "rule": cfg.judge.reward_rule(),
                             "control": cfg.judge.verify_control,
                             "decided_by": {s: sum(p["provenance"]["reward"]["decided_by"] == s for p in pairs)
                                            for s in ("verifier", "judge", "weighted")},
                             "agreement": verify.agreement(responses, found, scores)}
    write_json(out_dir / "stats.json", stats)
    outputs = {name: out_dir / f"{name}.jsonl" for name in ("judgments", "pairs", "known_answer", "consistency")}
    metrics = {key: v for key, v in stats.items() if key not in ("score_histogram", "constitution")}
    metrics["known_answer"] = {key: v for key, v in stats["known_answer"].items() if key != "by_corruption"}
    if found is not None:
        metrics["verifier_agreement"] = stats["verifier"]["agreement"]
    metrics.update(dtype=engine.dtype, mode=cfg.judge.mode)
    return Outputs({**outputs, "stats": out_dir / "stats.json"}, metrics)


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(v, spec=".2f"):
        return "n/a" if v is None else format(v, spec)

    ka = x["known_answer"]
    return (f"judge ({x['mode']}, {x['dtype']}): {x['valid']}/{x['judgments']} judgments valid ({x['valid_rate']:.0%}), mean score "
            f"{f(x['score_mean'])}, {x['pairs']} pairs from {x['prompts']} prompts (dropped: "
            f"{', '.join(f'{k} {v}' for k, v in x['dropped'].items() if v) or 'none'}), known-answer accuracy "
            f"{f(ka['accuracy'])} (n={ka['n']}){_agreement(x)}, tau vs previous judge "
            f"{f(x['consistency']['kendall_tau'])}")


def _agreement(x: dict) -> str:
    a = x.get("verifier_agreement")
    if not a:
        return ""
    if a["accuracy"] is None:
        return ", judge-verifier agreement n/a (no prompt with a passing and a failing response)"
    return (f", judge-verifier agreement {a['accuracy']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] "
            f"(n={a['n']} pass/fail pairs)")


STAGE = Stage("judge", reads=("judge", "model", "run.seed", "eval.pairwise_template", "eval.judge_prefill"),
              run=run, summary=summary, upstream=("data_gen",), lineage=True, extra=_other_inputs)
