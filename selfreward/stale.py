"""`--force` redoing a finished stage of iteration k: what was built on the old iteration k is set aside.

Contract: `before_stage(stage, cfg, iter_dir, force)` is called before a stage runs. When `force` is given and
the stage's finished manifest has another config hash than the stage's identity now (so the lifecycle will set
it aside and redo it), every later iteration directory is renamed `iter_NNN.stale-<time>` (never deleted),
iteration k's `outcome.json` is set aside, the history keeps only earlier iterations, and the promoted pointer
moves back to the newest promoted iteration before k if it pointed at k or later. It runs before the work,
so a redo that is itself interrupted leaves no pointer to a model that is being replaced.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from selfreward import artifacts, lifecycle
from selfreward.records import read_json


def will_redo(stage: lifecycle.Stage, cfg, iter_dir: Path) -> bool:
    """The stage finished with another config than it has now."""
    path = Path(iter_dir) / stage.name / "manifest.json"
    if not path.exists():
        return False
    return read_json(path)["config_hash"] != artifacts.config_hash(lifecycle.identity(stage, cfg, iter_dir))


def before_stage(stage: lifecycle.Stage, cfg, iter_dir: Path, force: bool) -> list[Path]:
    if not force or not will_redo(stage, cfg, iter_dir):
        return []
    return invalidate_after(Path(iter_dir).parent, artifacts.iteration_of(iter_dir))


def invalidate_after(run_dir: Path, k: int) -> list[Path]:
    """Iteration k is being redone: later iterations go aside, the promoted pointer comes back before k."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for iter_dir in sorted(Path(run_dir).glob("iter_[0-9][0-9][0-9]")):
        if artifacts.iteration_of(iter_dir) > k:
            aside = iter_dir.with_name(f"{iter_dir.name}.stale-{stamp}")
            os.replace(iter_dir, aside)
            moved.append(aside)
    outcome = artifacts.iteration_dir(run_dir, k) / "outcome.json"
    if outcome.exists():
        os.replace(outcome, outcome.with_name(f"outcome.replaced-{stamp}.json"))
    state = artifacts.read_state(run_dir)
    state["history"] = [h for h in state["history"] if h["iteration"] < k]
    if state["promoted_iteration"] >= k:
        back = max((h["iteration"] for h in state["history"] if h.get("promoted")), default=0)
        state.update(promoted_iteration=back,
                     adapter=artifacts.adapter_path(back) if back else artifacts.m0_adapter_path(run_dir))
    artifacts.write_state(run_dir, state)
    names = ", ".join(p.name for p in moved) or "none"
    print(f"[iter {k}] redone with --force: later iterations set aside ({names}); promoted pointer at iteration "
          f"{state['promoted_iteration']}", flush=True)
    return moved
