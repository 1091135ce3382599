"""Capability gains that mean something: resampled by base prompt, split by trained and held-out instruction
types, and split by what a constant short answer already passes.

Contract: `gains(rows, cand, prev, m0, cfg, seed)` takes the IFEval probe rows and three models' answers to them
(lists of response texts in row order: the candidate, the previous model, M0) and returns the metrics eval
writes and the gate reads:
- `capability_gain[_vs_m0]` (+ `_ci95`): prompt-level strict accuracy gain. Probes built on one base prompt
  are not independent (the shipped set uses each of 30 base prompts four times), so the intervals resample base
  prompts, not probes (`stats.bootstrap_mean` with clusters).
- `capability_gain_hard` / `capability_gain_easy` (+ `_ci95`, `_n`): the same gain on the probes that the
  constant answer "OK." fails / passes. A reward from checkers can teach a model to say less: a gain on the easy
  probes alone is a brevity trick, and the gate can refuse it (`eval.gate.capability_needs_hard_gain`).
- `capability_splits`: `trained` and `held_out`, instruction-level strict accuracy over the instructions whose
  type the run trains on (`data_gen.constraints.types`) or holds out (`hold_out_types`), each with the previous
  and M0 values, the gain and its interval, the constant-answer floor, the hard-instruction gain, and n. `None`
  where the run attaches no constraints (nothing was trained on either split), with the reason.
"""
from __future__ import annotations

from selfreward import ifeval
from selfreward.eval import capability
from selfreward.stats import bootstrap_mean


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _gain(new: list[float], old: list[float], clusters: list, seed: int) -> tuple[float | None, list]:
    diffs = [a - b for a, b in zip(new, old, strict=True)]
    lo, hi = bootstrap_mean(diffs, seed=seed, clusters=clusters)
    return _mean(diffs), [lo, hi]


def _instructions(rows: list[dict], scored: dict) -> list[tuple[str, str, bool]]:
    """(probe key, instruction type, strict verdict) for every instruction of every probe."""
    out = []
    for row in rows:
        verdicts = scored["per_prompt"][str(row["key"])]["instructions"]
        out += [(str(row["key"]), iid, ok) for iid, ok in zip(row["instruction_id_list"], verdicts)]
    return out


def _split(types: set[str], rows, scored: dict, base: dict, seed: int) -> dict:
    """Instruction-level accuracy over the instructions of `types`, for each model, with gains and intervals."""
    inst = {name: [x for x in _instructions(rows, s) if x[1] in types] for name, s in scored.items()}
    if not inst["cand"]:
        return {"types": sorted(types), "n_instructions": 0, "accuracy": None, "gain": None, "gain_ci95": [None, None],
                "reason": "no probe carries these types"}
    clusters = [base[key] for key, _, _ in inst["cand"]]
    vals = {name: [float(ok) for _, _, ok in xs] for name, xs in inst.items()}
    hard = [i for i, ok in enumerate(vals["floor"]) if not ok]
    gain, ci = _gain(vals["cand"], vals["prev"], clusters, seed)
    gain_m0, ci_m0 = _gain(vals["cand"], vals["m0"], clusters, seed)
    gain_hard, ci_hard = _gain([vals["cand"][i] for i in hard], [vals["prev"][i] for i in hard],
                               [clusters[i] for i in hard], seed)
    return {"types": sorted(types), "n_instructions": len(clusters), "n_base_prompts": len(set(clusters)),
            "accuracy": _mean(vals["cand"]), "previous": _mean(vals["prev"]), "m0": _mean(vals["m0"]),
            "floor": _mean(vals["floor"]), "gain": gain, "gain_ci95": ci, "gain_vs_m0": gain_m0,
            "gain_vs_m0_ci95": ci_m0, "gain_hard": gain_hard, "gain_hard_ci95": ci_hard, "n_hard": len(hard)}


def gains(rows: list[dict], cand: list[str], prev: list[str], m0: list[str], cfg, seed: int) -> dict:
    scored = {"cand": capability.score(rows, cand), "prev": capability.score(rows, prev),
              "m0": capability.score(rows, m0),
              "floor": capability.score(rows, [capability.CONSTANT_ANSWER] * len(rows))}
    base = {str(r["key"]): ifeval.base_prompt(r).lower() for r in rows}
    keys = [str(r["key"]) for r in rows]
    strict = {name: [float(s["per_prompt"][k]["strict"]) for k in keys] for name, s in scored.items()}
    clusters = [base[k] for k in keys]
    out = {"capability_base_prompts": len(set(clusters))}
    gain, ci = _gain(strict["cand"], strict["prev"], clusters, seed)
    gain_m0, ci_m0 = _gain(strict["cand"], strict["m0"], clusters, seed)
    out.update(capability_gain=gain, capability_gain_ci95=ci, capability_gain_vs_m0=gain_m0,
               capability_gain_vs_m0_ci95=ci_m0)
    for kind, keep in (("hard", False), ("easy", True)):
        idx = [i for i, ok in enumerate(strict["floor"]) if bool(ok) == keep]
        g, g_ci = _gain([strict["cand"][i] for i in idx], [strict["prev"][i] for i in idx],
                        [clusters[i] for i in idx], seed)
        out.update({f"capability_gain_{kind}": g, f"capability_gain_{kind}_ci95": g_ci,
                    f"capability_gain_{kind}_n": len(idx)})
    cons = cfg.data_gen.constraints
    if cons.share == 0:
        out["capability_splits"] = {"trained": None, "held_out": None,
                                    "reason": "the run attaches no constraints (data_gen.constraints.share: 0)"}
    else:
        out["capability_splits"] = {"trained": _split(set(cons.types), rows, scored, base, seed),
                                    "held_out": _split(set(cons.hold_out_types), rows, scored, base, seed)}
    return out
