"""eval: the candidate M(k) against M(k-1) and M0 on fixed probe sets, then the gate's decision.

Contract: writes `probes.jsonl` (drift probes, sampled at eval.temperature), `capability.jsonl` (IFEval probes,
greedy), `metrics.json` (every measure with the previous model's values and intervals) and, for k >= 1, the
gate's `decision.json`. The `BASELINE` stage writes M0's outputs to iter_000/eval once per run; iteration k
compares with the outputs of the iteration that produced M(k-1). Measures: drift (KL per token on the
candidate's temperature-1 samples, entropy, length), collapse (distinct-2, repetition, cross-response overlap,
semantic similarity; prompt drift of the synthesised prompts), capability (IFEval checkers, with the constant
answer floor; gains resampled by base prompt and split by trained / held-out type and by what a short answer
passes, `eval/splits.py`, beside the capability answers' length change), judge health (self-judging, and the judge stage's known-answer accuracy and saturation compared
with the previous iteration) and the frozen M0 judge's both-order win rate.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts, engine as engines
from selfreward.config import Config
from selfreward.engine import ScoreRequest
from selfreward.eval import capability, diversity, gate, preference, probes, splits
from selfreward.eval.metrics import entropy_per_token, kl_estimate
from selfreward.lifecycle import Outputs, Stage
from selfreward.records import read_json, read_jsonl, write_json

JUDGING_KEYS = tuple(f"judge.{k}" for k in ("constitution", "mode", "format", "structured", "num_judgments",
                                             "temperature", "max_tokens", "reason_max_chars", "min_score_mass"))
# what decides a model's probe outputs and its self-judging of them
PROBE_KEYS = ("eval.probes", "eval.capability_probes", "eval.temperature", "eval.max_tokens",
              "eval.capability_max_tokens", *JUDGING_KEYS, "model", "run.seed")
_OUTPUTS = ("probes", "capability")


def baseline(cfg: Config, iter_dir: Path) -> Outputs:
    """iter_000/eval: M0's probe outputs and metrics, the reference point for iteration 1."""
    out_dir = iter_dir / "eval"
    m0 = artifacts.m0_adapter(iter_dir.parent)  # the SFT bootstrap's adapter, when the run has one
    engine = engines.for_config(cfg)
    metrics = probes.model_side(engine, cfg, m0, out_dir, "M0")
    metrics["dtype"] = engine.dtype
    metrics["capability_floor"] = capability.floor(capability.read_ifeval(cfg.eval.capability_probes))
    write_json(out_dir / "metrics.json", metrics)
    return Outputs({**{n: out_dir / f"{n}.jsonl" for n in _OUTPUTS}, "metrics": out_dir / "metrics.json"},
                   _flat(metrics))


def _flat(metrics: dict) -> dict:
    out = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for name, split in (metrics.get("capability_splits") or {}).items():
        if isinstance(split, dict):
            out.update({f"capability_splits_{name}_{k}": v for k, v in split.items() if k in ("accuracy", "gain")})
    out.update({f"capability_{k}": v for k, v in metrics.get("capability", {}).items()})
    out.update({f"capability_floor_{k}": v for k, v in (metrics.get("capability_floor") or {}).items()})
    return out


def _tag(rows: list[dict], name: str) -> list[dict]:
    return [{**r, "id": f"{name}:{r['id']}"} for r in rows]


def _compared(cfg: Config, side: dict[str, list[dict]]) -> list[dict]:
    """The answers the frozen judge compares (`eval.win_rate_probes`), tagged by probe set."""
    which = cfg.eval.win_rate_probes
    return ((_tag(side["probes"], "drift") if which in ("all", "drift") else [])
            + (_tag(side["capability"], "cap") if which in ("all", "capability") else []))


def _capability(cfg: Config, cand: list[dict], before: list[dict], m0: list[dict]) -> dict:
    """Capability gains (by base prompt, split by type and by what a short answer passes) and the length change
    of the capability answers beside them."""
    rows = capability.read_ifeval(cfg.eval.capability_probes)
    by_id = [{r["id"]: r for r in side} for side in (cand, before, m0)]
    texts = [[side[str(r["key"])]["response"] for r in rows] for side in by_id]
    out = splits.gains(rows, *texts, cfg, cfg.run.seed)
    lengths = [sum(r["n_tokens"] for r in side) / len(side) for side in (cand, before)]
    out["capability_length_ratio"] = _ratio(*lengths)
    return out


def _ratio(new, old):
    """A ratio that a previous value of 0 cannot turn into a pass: 0/0 is undefined, x/0 is infinite."""
    if new is None or old is None:
        return None
    if old == 0:
        return None if new == 0 else float("inf")
    return new / old


def _judge_health(iter_dir: Path) -> dict:
    """This iteration's judge (from the judge stage) against the previous iteration's."""
    now = read_json(iter_dir / "judge" / "stats.json")
    k = artifacts.iteration_of(iter_dir)
    before_path = artifacts.iteration_dir(iter_dir.parent, k - 1) / "judge" / "stats.json"
    before = read_json(before_path) if k > 1 and before_path.exists() else None
    acc = now["known_answer"]["accuracy"]
    prev_acc = before["known_answer"]["accuracy"] if before else None
    delta = acc - prev_acc if acc is not None and prev_acc is not None else None
    return {"known_answer_accuracy": acc, "known_answer_accuracy_previous": prev_acc, "known_answer_delta": delta,
            "known_answer_delta_reason": "no previous judge" if before is None else None,
            "top_score_share": now["top_score_share"], "judge_stage_valid_rate": now["valid_rate"]}


def _drift(engine, cand: list[dict], adapter: str, parent: str | None) -> dict:
    msgs = [([{"role": "user", "content": c["prompt"]}], c["response"]) for c in cand]
    lp_c = engine.score([ScoreRequest(m, r, adapter) for m, r in msgs])
    lp_p = engine.score([ScoreRequest(m, r, parent) for m, r in msgs])
    kl_seq, kl_tok = kl_estimate(lp_c, lp_p)
    return {"kl_per_sequence": kl_seq, "kl_per_token": kl_tok, "entropy_per_token": entropy_per_token(lp_c)}


def run(cfg: Config, iter_dir: Path) -> Outputs:
    out_dir = iter_dir / "eval"
    k = artifacts.iteration_of(iter_dir)
    lin = artifacts.lineage(iter_dir)
    engine = engines.for_config(cfg)
    adapter = str((iter_dir / "train" / "adapter").resolve())
    parent_dir = artifacts.iteration_dir(iter_dir.parent, lin["parent_iteration"]) / "eval"
    m0_dir = artifacts.iteration_dir(iter_dir.parent, 0) / "eval"
    prev, m0 = read_json(parent_dir / "metrics.json"), read_json(m0_dir / "metrics.json")
    side = probes.model_side(engine, cfg, adapter, out_dir, f"iter {k}")
    cand = {n: read_jsonl(out_dir / f"{n}.jsonl") for n in _OUTPUTS}
    before = {n: read_jsonl(parent_dir / f"{n}.jsonl") for n in _OUTPUTS}
    pref = preference.win_rate(engine, cfg, _compared(cfg, cand), _compared(cfg, before), out_dir / "shards",
                               f"iter {k}", judge_adapter=artifacts.m0_adapter(iter_dir.parent))
    seeds = [s["instruction"] for s in read_jsonl(cfg.data_gen.seeds)]
    prompts = [p["instruction"] for p in read_jsonl(iter_dir / "data_gen" / "prompts.jsonl")]
    metrics = {**side, **pref, **_drift(engine, cand["probes"], adapter, artifacts.parent_adapter(iter_dir)),
               **_judge_health(iter_dir),
               **_capability(cfg, cand["capability"], before["capability"], read_jsonl(m0_dir / "capability.jsonl")),
               "capability_floor": m0.get("capability_floor"),
               "prompt_drift": diversity.prompt_drift(prompts, seeds),
               "previous": {key: prev.get(key) for key in ("distinct2", "length_mean", "judge_valid_rate",
                                                            "judge_saturation", "repetition4", "cross_overlap4",
                                                            "semantic_similarity", "capability")},
               "length_ratio": _ratio(side["length_mean"], prev["length_mean"]),
               "distinct2_ratio": _ratio(side["distinct2"], prev["distinct2"]),
               "judge_valid_rate_delta": None if side["judge_valid_rate"] is None or prev["judge_valid_rate"] is None
               else side["judge_valid_rate"] - prev["judge_valid_rate"]}
    metrics["dtype"] = engine.dtype
    decision = gate.decide(metrics, cfg.eval.gate)
    decision.update({"iteration": k, "candidate": artifacts.adapter_path(k), "previous_iteration": lin["parent_iteration"]})
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "decision.json", decision)
    return Outputs({**{n: out_dir / f"{n}.jsonl" for n in _OUTPUTS}, "metrics": out_dir / "metrics.json",
                    "decision": out_dir / "decision.json"}, {**_flat(metrics), "gate_passed": decision["passed"]})


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(key):
        return "n/a" if x.get(key) is None else f"{x[key]:.3f}"

    splits_ = "".join(f", {name.replace('_', '-')} types gain {f(f'capability_splits_{name}_gain')}"
                      for name in ("trained", "held_out") if x.get(f"capability_splits_{name}_gain") is not None)
    return (f"eval: win rate {f('win_rate')} (n={x['win_rate_n']}), IFEval prompt-strict "
            f"{f('capability_prompt_strict')} (gain {f('capability_gain')}; on probes a short answer fails "
            f"{f('capability_gain_hard')}{splits_}), length ratio {f('length_ratio')}, "
            f"distinct-2 ratio {f('distinct2_ratio')}, semantic similarity {f('semantic_similarity')}, "
            f"KL/token {f('kl_per_token')}, {x['dtype']}; gate {'PASSED' if x['gate_passed'] else 'FAILED'}")


def baseline_summary(m: dict) -> str:
    x = m["metrics"]
    return (f"eval: baseline M0: IFEval prompt-strict {x['capability_prompt_strict']:.3f} (constant-answer floor "
            f"{x['capability_floor_prompt_strict']:.3f}), distinct-2 {x['distinct2']:.3f}, "
            f"length {x['length_mean']:.1f} tokens, judge valid rate {x['judge_valid_rate']:.2f}, {x.get('dtype') or 'dtype not recorded'}")


STAGE = Stage("eval", reads=("eval", *PROBE_KEYS, "data_gen.seeds"), run=run, summary=summary,
              upstream=("data_gen", "judge", "train"), lineage=True)
BASELINE = Stage("eval", reads=PROBE_KEYS, run=baseline, summary=baseline_summary, extra=artifacts.m0_config)
