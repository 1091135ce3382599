"""The self-rewarding loop: the only module that imports more than one stage package.

Contract: `run(cfg)` creates or resumes a run directory, evaluates M0 once (iter_000), then runs each
iteration's stages in order through `lifecycle.execute`; only a passed gate moves `state.json`'s promoted
pointer. `check_recipe(cfg)` runs the checks that need a stage's library (TRL's DPOConfig) without loading
a model.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from selfreward import artifacts, lifecycle
from selfreward.config import Config, RecipeError, dump, identity
from selfreward.launch import IterationEnded
from selfreward.records import read_json, write_atomic, write_json
from selfreward.tracking import Tracker


def _stages() -> list[lifecycle.Stage]:
    from selfreward.data_gen import stage as data_gen
    from selfreward.eval import stage as evaluation
    from selfreward.judge import stage as judge
    from selfreward.train import stage as train

    return [data_gen.STAGE, judge.STAGE, train.STAGE, evaluation.STAGE]


def check_recipe(cfg: Config, origin: str) -> None:
    """TRL validates train.dpo_overrides by building the DPOConfig (nothing is written, no model loads)."""
    import tempfile

    from selfreward.train.dpo import build_dpo_config

    try:
        with tempfile.TemporaryDirectory() as tmp:
            build_dpo_config(cfg, tmp)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{origin}: train.dpo_overrides: {str(e).splitlines()[0]}") from None


def prepare_run_dir(cfg: Config, force: bool) -> Path:
    """Create the run directory with run.yaml, or check that an existing one was made by the same recipe."""
    run_dir = cfg.run_dir()
    text = dump(cfg)
    path = run_dir / "run.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text())
        changed = artifacts.changed_keys(identity(old), identity(cfg.model_dump(mode="json")))
        if changed and not force:
            raise RecipeError(f"{path}: the run was started with a different config (changed: {', '.join(changed)}); "
                              f"use another run.name, or --force to redo the affected stages")
        if changed:
            write_atomic(path.with_name(f"run.replaced-{time.strftime('%Y%m%dT%H%M%S')}.yaml"), path.read_text())
        if path.read_text() != text:  # operational keys (iterations, shard sizes, tracking) may change on resume
            write_atomic(path, text)
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
        except OSError as e:
            raise RecipeError(f"run.output_dir: cannot create {run_dir}: {e.strerror or e}") from None
    if artifacts.read_state(run_dir) is None:
        artifacts.write_state(run_dir, {"promoted_iteration": 0, "model": cfg.model.ref, "adapter": None,
                                        "history": []})
    return run_dir


def _start_iteration(run_dir: Path, k: int) -> Path:
    iter_dir = artifacts.iteration_dir(run_dir, k)
    if not (iter_dir / "lineage.json").exists():
        state = artifacts.read_state(run_dir)
        write_json(iter_dir / "lineage.json", {"iteration": k, "parent_iteration": state["promoted_iteration"],
                                               "parent_adapter": state["adapter"]})
    return iter_dir


def _conclude(run_dir: Path, k: int, promoted: bool, reasons: list[str]) -> None:
    """Move the promoted pointer (only on a passed gate), then record the iteration's outcome."""
    state = artifacts.read_state(run_dir)
    if promoted and state["promoted_iteration"] < k:
        state.update(promoted_iteration=k, adapter=artifacts.adapter_path(k))
    if not any(h["iteration"] == k for h in state["history"]):
        state["history"].append({"iteration": k, "promoted": promoted, "reasons": reasons})
    artifacts.write_state(run_dir, state)
    write_json(artifacts.iteration_dir(run_dir, k) / "outcome.json",
               {"iteration": k, "promoted": promoted, "reasons": reasons})


def run_iteration(cfg: Config, run_dir: Path, k: int, force: bool, tracker: Tracker) -> bool:
    iter_dir = _start_iteration(run_dir, k)
    for stage in _stages():
        existed = (iter_dir / stage.name / "manifest.json").exists()
        try:
            manifest = lifecycle.execute(stage, cfg, iter_dir, force)
        except IterationEnded as e:
            print(f"[iter {k}] {stage.name}: {e}; iteration ends without promotion", flush=True)
            _conclude(run_dir, k, False, [str(e)])
            return False
        note = " (already done, skipped)" if existed and not force else ""
        print(f"[iter {k}] {stage.summary(manifest)} [{manifest['wall_time_s']:.0f}s]{note}", flush=True)
        tracker.log(k, stage.name, manifest)
    decision = read_json(iter_dir / "eval" / "decision.json")
    _conclude(run_dir, k, decision["passed"], decision["reasons"])
    verdict = "promoted" if decision["passed"] else "not promoted"
    print(f"[iter {k}] gate: {verdict}: {'; '.join(decision['reasons'])}", flush=True)
    return decision["passed"]


def run(cfg: Config, force: bool = False) -> Path:
    from selfreward.eval import stage as evaluation

    run_dir = prepare_run_dir(cfg, force)
    pending = [k for k in range(1, cfg.run.iterations + 1)
               if not (artifacts.iteration_dir(run_dir, k) / "outcome.json").exists() or force]
    if not pending:
        state = artifacts.read_state(run_dir)
        print(f"{run_dir}: all {cfg.run.iterations} iterations are complete; nothing to do "
              f"(promoted: iteration {state['promoted_iteration']})", flush=True)
        return run_dir
    tracker = Tracker(cfg, run_dir)
    try:
        base = lifecycle.execute(evaluation.BASELINE, cfg, artifacts.iteration_dir(run_dir, 0), force)
        tracker.log(0, "eval", base)
        print(f"[iter 0] baseline M0: distinct-2 {base['metrics']['distinct2']:.3f}, length "
              f"{base['metrics']['length_mean']:.1f} tokens, judge valid rate "
              f"{base['metrics']['judge_valid_rate']:.2f}", flush=True)
        for k in range(1, cfg.run.iterations + 1):
            if (artifacts.iteration_dir(run_dir, k) / "outcome.json").exists() and not force:
                print(f"[iter {k}] already concluded, skipped", flush=True)
                continue
            run_iteration(cfg, run_dir, k, force, tracker)
    finally:
        tracker.finish()
    state = artifacts.read_state(run_dir)
    print(f"{run_dir}: done; promoted iteration {state['promoted_iteration']}", flush=True)
    return run_dir
