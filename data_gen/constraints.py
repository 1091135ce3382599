"""Verifiable instructions attached to new prompts, and the probes' base prompts that training must never see.

Contract:
- `attach(prompts, cfg, k)` gives a seeded share (`data_gen.constraints.share`) of the new prompts one to
  `max_per_prompt` non-conflicting instructions drawn from `constraints.types` (never a held-out type), each
  described by lm-eval's checker (`build_description`) with its parameters drawn from a seed of (run seed,
  iteration, prompt id, slot). Rows an earlier iteration wrote (`carried: true`, `data_gen.pool: accumulate`) keep
  their instructions and are not counted in the share. Every row then reads as an IFEval input, numbered in file
  order: `key`, `prompt` (= `instruction`), `instruction_id_list`, `kwargs` (empty lists on an unconstrained
  row), plus `base_instruction`. The same config and prompts always give the same rows.
- `probe_bases(cfg)` lists every eval probe's prompt (drift and capability) with its base prompt (the text
  without the checkers' descriptions, and its first sentence where the descriptions were written by hand):
  data_gen adds them to what a new prompt must not resemble (ROUGE-L), so nothing the gate measures is trained on.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from selfreward import ifeval
from selfreward.engine import seed_for


def _pick(rng: random.Random, types: list[str], n: int) -> list[str]:
    chosen: list[str] = []
    for iid in rng.sample(types, len(types)):
        if len(chosen) == n:
            break
        if not any(ifeval.conflicts(iid, c) for c in chosen):
            chosen.append(iid)
    return chosen


def _constrain(row: dict, cfg, k: int) -> dict:
    cons = cfg.data_gen.constraints
    rng = random.Random(seed_for(cfg.run.seed, k, "constraints", row["id"]))
    ids, kwargs, text = [], [], [row["instruction"]]
    for slot, iid in enumerate(_pick(rng, list(cons.types), rng.randint(1, cons.max_per_prompt))):
        description, kw = ifeval.describe(iid, seed_for(cfg.run.seed, k, "constraint", row["id"], slot))
        ids.append(iid)
        kwargs.append(kw)
        text.append(description)
    return {**row, "base_instruction": row["instruction"], "instruction": " ".join(text), "instruction_id_list": ids,
            "kwargs": kwargs}


def attach(prompts: list[dict], cfg, k: int) -> list[dict]:
    """The prompts with constraints on a seeded share of the new ones, every row in the IFEval input format."""
    share = cfg.data_gen.constraints.share
    if share == 0:
        return prompts
    new = [i for i, row in enumerate(prompts) if not row.get("carried")]
    rng = random.Random(seed_for(cfg.run.seed, k, "constrained"))
    chosen = {new[j] for j in rng.sample(range(len(new)), round(share * len(new)))}
    plain = {"instruction_id_list": [], "kwargs": []}
    out = []
    for i, row in enumerate(prompts):
        if i in chosen:
            row = _constrain(row, cfg, k)
        elif i in new or "instruction_id_list" not in row:
            row = {**row, "base_instruction": row.get("base_instruction", row["instruction"]), **plain}
        out.append({**row, "key": i, "prompt": row["instruction"]})
    return out


def probe_bases(cfg) -> list[str]:
    """Base prompts of the drift and capability probes (the text without the instructions' descriptions)."""
    bases = []
    for path, field in ((cfg.eval.probes, "prompt"), (cfg.eval.capability_probes, "prompt")):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            bases.append(row[field])
            if row.get("instruction_id_list"):  # the text without the checkers' descriptions, and where those
                # were written by hand, the first sentence
                bases.append(ifeval.base_prompt({**row, "kwargs": row.get("kwargs") or [{}] * len(
                    row["instruction_id_list"])}))
                bases.append(re.split(r"(?<=[.?!])\s", row[field].strip(), maxsplit=1)[0])
    return list(dict.fromkeys(bases))
