"""The verifier beside the self-judge: IFEval's checkers on responses to constrained prompts, the reward they give,
and how often the self-judge agrees with them.

Contract:
- `verdicts(prompts, responses)` checks every response to a prompt that carries instructions
  (`instruction_id_list`) with lm-eval's strict and loose tests: {response_id: {strict, loose, share, passed}},
  `share` the fraction of instructions followed (strict), `passed` all of them. Unconstrained prompts get none.
- `rewarded(verdicts, responses, jc, seed)` is what the pairs are built from: the verdicts themselves, or under
  `judge.verify_control: shuffled` (a negative control) each response's verdict replaced by that of a response
  to the same prompt drawn at random, seeded, so the reward carries no information about the response.
- `agreement(responses, verdicts, scores)`: over every (passing, failing) pair of judge-scored responses to one
  prompt, the share the self-judge scores the passing one higher (ties count as not higher, as for known-answer
  checks), with a Wilson 95% interval, n and the number of ties. Always measured on the true verdicts.
"""
from __future__ import annotations

import random

from selfreward import ifeval
from selfreward.stats import wilson


def verdicts(prompts: list[dict], responses: list[dict]) -> dict[str, dict]:
    rows = {p["id"]: p for p in prompts if p.get("instruction_id_list")}
    out = {}
    for r in responses:
        row = rows.get(r["prompt_id"])
        if row is None:
            continue
        v = ifeval.verify(row, r["response"])
        out[r["id"]] = {**v, "share": sum(v["strict"]) / len(v["strict"]), "passed": all(v["strict"])}
    return out


def rewarded(found: dict[str, dict], responses: list[dict], jc, seed) -> dict[str, dict]:
    """The verdicts the reward uses: the true ones, or shuffled within each prompt (verify_control: shuffled)."""
    if jc.verify_control != "shuffled":
        return found
    by_prompt: dict[str, list[str]] = {}
    for r in responses:
        if r["id"] in found:
            by_prompt.setdefault(r["prompt_id"], []).append(r["id"])
    out = {}
    for pid, ids in sorted(by_prompt.items()):
        rng = random.Random(f"{seed}:{pid}")
        for rid in ids:
            out[rid] = {**found[rng.choice(ids)], "shuffled": True}
    return out


def agreement(responses: list[dict], found: dict[str, dict], scores: dict[str, float]) -> dict:
    by_prompt: dict[str, list[dict]] = {}
    for r in responses:
        if r["id"] in found and r["id"] in scores:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    above = ties = n = 0
    prompts = 0
    for rows in by_prompt.values():
        passing = [r["id"] for r in rows if found[r["id"]]["passed"]]
        failing = [r["id"] for r in rows if not found[r["id"]]["passed"]]
        prompts += bool(passing and failing)
        for a in passing:
            for b in failing:
                n += 1
                above += scores[a] > scores[b]
                ties += scores[a] == scores[b]
    lo, hi = wilson(above, n)
    return {"accuracy": round(above / n, 4) if n else None, "ci95": [lo, hi], "n": n, "ties": ties,
            "prompts": prompts}


def summary(found: dict[str, dict], responses: list[dict], prompts: list[dict]) -> dict:
    """How the responses fare under the verifier (strict and loose), for stats.json."""
    constrained = [p for p in prompts if p.get("instruction_id_list")]
    checked = [found[r["id"]] for r in responses if r["id"] in found]
    instr = [x for v in checked for x in v["strict"]]
    loose = [x for v in checked for x in v["loose"]]
    return {"constrained_prompts": len(constrained), "responses_checked": len(checked),
            "prompt_strict": round(sum(v["passed"] for v in checked) / len(checked), 4) if checked else None,
            "prompt_loose": round(sum(all(v["loose"]) for v in checked) / len(checked), 4) if checked else None,
            "instruction_strict": round(sum(instr) / len(instr), 4) if instr else None,
            "instruction_loose": round(sum(loose) / len(loose), 4) if loose else None}
