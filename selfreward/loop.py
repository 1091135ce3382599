"""The self-rewarding loop: the only module that imports more than one stage package.

Contract: `run(cfg)` creates or resumes a run directory, evaluates M0 once (iter_000), then runs each
iteration's stages in order through `lifecycle.execute`; only a passed gate moves `state.json`'s promoted
pointer. `check_recipe(cfg)` runs the checks that need a stage's library (TRL's DPOConfig) without loading
a model. `stages()`, `baseline_stage()`, `start_iteration` and `run_iteration` are also how `jobs` runs one
stage of one iteration as a scheduler job.
"""
from __future__ import annotations

import time
from pathlib import Path

from selfreward import artifacts, lifecycle, oversight
from selfreward import runlock, stale, status, stopping  # slurm: lock, --force stale marking; run.yaml; stop budget
from selfreward.config import Config, RecipeError, dump, identity
from selfreward.exits import IterationEnded
from selfreward.records import read_json, write_atomic, write_json
from selfreward.tracking import Tracker


def timing(manifest: dict) -> str:
    """A stage's wall time and throughput, as its summary line ends: inference tokens (prompt + generated) per
    second of the stage, or training tokens per second."""
    out = f"{manifest.get('wall_time_s', 0):.0f}s"
    tokens = manifest.get("tokens")
    if tokens:
        out += f", {tokens['generated_per_s']:.0f} generated tokens/s, {tokens['per_s']:.0f} tokens/s in all"
    elif manifest.get("metrics", {}).get("tokens_per_s"):
        out += f", {manifest['metrics']['tokens_per_s']:.0f} training tokens/s"
    return out


def stages() -> list[lifecycle.Stage]:
    """An iteration's stages, in the order they run."""
    from selfreward.data_gen import stage as data_gen
    from selfreward.eval import stage as evaluation
    from selfreward.judge import stage as judge
    from selfreward.train import stage as train

    return [data_gen.STAGE, judge.STAGE, train.STAGE, evaluation.STAGE]


def baseline_stage() -> lifecycle.Stage:
    """M0's evaluation, once per run in iter_000 (after the SFT bootstrap when the recipe has one)."""
    from selfreward.eval import stage as evaluation

    return evaluation.BASELINE


def check_recipe(cfg: Config, origin: str) -> None:
    """Checks that need a stage's library: the capability probes against IFEval's checkers, and TRL validates
    train.dpo_overrides by building the DPOConfig (nothing is written, no model loads)."""
    import tempfile

    from selfreward.eval import capability
    from selfreward.train.dpo import build_dpo_config

    try:
        capability.read_ifeval(cfg.eval.capability_probes)
    except capability.CapabilityError as e:
        raise RecipeError(f"{origin}: eval.capability_probes: {e}") from None

    from selfreward import engine

    misfit = engine.kv_cache_misfit(cfg.model)
    if misfit:
        raise RecipeError(f"{origin}: model.kv_cache_gib: {misfit}")
    _check_datasets(cfg, origin)
    # last: TRL's import (with transformers' and torch's) is most of this check's time, so that a mistake found
    # above is reported in about a second
    try:
        with tempfile.TemporaryDirectory() as tmp:
            build_dpo_config(cfg, tmp)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{origin}: train.dpo_overrides: {str(e).splitlines()[0]}") from None


def _check_datasets(cfg: Config, origin: str) -> None:
    """Datasets the recipe names load, have their mapped columns and rows (a hub id is refused while offline);
    the SFT data's judgments parse and TRL validates the SFTConfig."""
    from selfreward import datasource
    from selfreward.train import sft

    key = "data_gen.dataset"
    try:
        if cfg.data_gen.source == "dataset":
            datasource.check(cfg.data_gen.dataset)
        if cfg.sft.enabled:
            key = "sft"
            sft.check(cfg)
    except (datasource.DatasetError, TypeError, ValueError) as e:
        raise RecipeError(f"{origin}: {key}: {str(e).splitlines()[0]}") from None


def bootstrap(cfg: Config, run_dir: Path, force: bool, tracker: Tracker) -> None:
    """The SFT bootstrap (sft.enabled) before iteration 1; its adapter becomes M0, recorded in state.json."""
    from selfreward.train import sft

    state = artifacts.read_state(run_dir)
    rel = None
    if not cfg.sft.enabled and not (state.get("m0") or {}).get("adapter"):
        return  # M0 is the base model, as it always was
    if cfg.sft.enabled:
        manifest = lifecycle.execute(sft.STAGE, cfg, artifacts.iteration_dir(run_dir, 0), force)
        tracker.log(0, "sft", manifest)
        print(f"[iter 0] {sft.STAGE.summary(manifest)} [{timing(manifest)}]", flush=True)
        rel = f"{artifacts.SFT_DIR}/adapter"
        m0 = {"model": cfg.model.ref, "adapter": rel, "sft_config_hash": manifest["config_hash"]}
    else:
        m0 = {"model": cfg.model.ref, "adapter": None}
    if state.get("m0") != m0:
        state["m0"] = m0
        if state["promoted_iteration"] == 0:
            state["adapter"] = rel
        artifacts.write_state(run_dir, state)


def prepare_run_dir(cfg: Config, force: bool) -> Path:
    """Create the run directory with run.yaml, or check that an existing one was made by the same recipe; then
    hold its lock (a directory another live process writes is refused before anything is written)."""
    run_dir = cfg.run_dir()
    stopping.set_stop_budget(cfg.launch.stop_within_s)
    text = dump(cfg)
    path = run_dir / "run.yaml"
    if path.exists():
        old = status.recipe(run_dir)
        changed = artifacts.changed_keys(identity(old), identity(cfg.model_dump(mode="json")))
        if changed and not force:
            raise RecipeError(f"{path}: the run was started with a different config (changed: {', '.join(changed)}); "
                              f"use another run.name, or --force to redo the affected stages")
        runlock.acquire(run_dir)
        if changed:
            write_atomic(path.with_name(f"run.replaced-{time.strftime('%Y%m%dT%H%M%S')}.yaml"), path.read_text())
        if path.read_text() != text:  # operational keys (iterations, shard sizes, tracking) may change on resume
            write_atomic(path, text)
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            runlock.acquire(run_dir)
            write_atomic(path, text)
        except OSError as e:
            raise RecipeError(f"run.output_dir: cannot create {run_dir}: {e.strerror or e}") from None
    if artifacts.read_state(run_dir) is None:
        artifacts.write_state(run_dir, {"promoted_iteration": 0, "model": cfg.model.ref, "adapter": None,
                                        "history": []})
    return run_dir


def start_iteration(run_dir: Path, k: int) -> Path:
    """Iteration k's directory, with its parent M(k-1) fixed in lineage.json the first time it starts (from
    state.json's promoted pointer), so a resumed iteration sees the same parent."""
    iter_dir = artifacts.iteration_dir(run_dir, k)
    if not (iter_dir / "lineage.json").exists():
        state = artifacts.read_state(run_dir)
        write_json(iter_dir / "lineage.json", {"iteration": k, "parent_iteration": state["promoted_iteration"],
                                               "parent_adapter": state["adapter"]})
    return iter_dir


def run_iteration(cfg: Config, run_dir: Path, k: int, force: bool, tracker: Tracker) -> str:
    """Run iteration k's stages; returns promoted, refused, ended (no pairs, NaN loss, ...) or held (manual)."""
    iter_dir = start_iteration(run_dir, k)
    for stage in stages():
        existed = (iter_dir / stage.name / "manifest.json").exists()
        stale.before_stage(stage, cfg, iter_dir, force)  # redoing a finished stage: later iterations go aside
        try:
            manifest = lifecycle.execute(stage, cfg, iter_dir, force)
        except IterationEnded as e:
            print(f"[iter {k}] {stage.name}: {e}; iteration ends without promotion", flush=True)
            oversight.conclude(run_dir, k, False, [str(e)])
            return "ended"
        note = " (already done, skipped)" if existed and not force else ""
        print(f"[iter {k}] {stage.summary(manifest)} [{timing(manifest)}]{note}", flush=True)
        tracker.log(k, stage.name, manifest)
    decision = read_json(iter_dir / "eval" / "decision.json")
    if cfg.run.oversight == "manual":
        oversight.hold(run_dir, k, decision)
        print(f"[iter {k}] gate {'passed' if decision['passed'] else 'refused'}: {'; '.join(decision['reasons'])}\n"
              f"[iter {k}] waiting for a human (run.oversight: manual): selfreward approve {run_dir} --iteration {k} "
              f"--reason \"...\"  or  selfreward reject {run_dir} --iteration {k} --reason \"...\"", flush=True)
        return "held"
    oversight.conclude(run_dir, k, decision["passed"], decision["reasons"])
    verdict = "promoted" if decision["passed"] else "not promoted"
    print(f"[iter {k}] gate: {verdict}: {'; '.join(decision['reasons'])}", flush=True)
    return "promoted" if decision["passed"] else "refused"


def run(cfg: Config, force: bool = False) -> Path:
    run_dir = prepare_run_dir(cfg, force)
    if not force:
        artifacts.check_intact(run_dir)  # --force redoes a damaged stage (lifecycle); without it, say which
    pending = [k for k in range(1, cfg.run.iterations + 1)
               if not (artifacts.iteration_dir(run_dir, k) / "outcome.json").exists() or force]
    stopped = cfg.eval.gate.on_fail == "stop" and any(not h["promoted"] for h in artifacts.read_state(run_dir)["history"])
    if not pending or stopped and not force:
        state = artifacts.read_state(run_dir)
        why = ("the gate refused an iteration and eval.gate.on_fail is stop" if pending else
               f"all {cfg.run.iterations} iterations are complete")
        print(f"{run_dir}: {why}; nothing to do (promoted: iteration {state['promoted_iteration']})", flush=True)
        return run_dir
    tracker = Tracker(cfg, run_dir)
    try:
        bootstrap(cfg, run_dir, force, tracker)
        baseline = baseline_stage()
        base = lifecycle.execute(baseline, cfg, artifacts.iteration_dir(run_dir, 0), force)
        tracker.log(0, "eval", base)
        print(f"[iter 0] {baseline.summary(base)} [{timing(base)}]", flush=True)
        for k in range(1, cfg.run.iterations + 1):
            if (artifacts.iteration_dir(run_dir, k) / "outcome.json").exists() and not force:
                print(f"[iter {k}] already concluded, skipped", flush=True)
                continue
            if oversight.awaiting(run_dir) == k:
                print(f"[iter {k}] waits for a human decision: selfreward approve|reject {run_dir} --iteration {k} "
                      f"--reason \"...\"", flush=True)
                return run_dir
            result = run_iteration(cfg, run_dir, k, force, tracker)
            if result == "held":
                return run_dir
            if result == "refused" and cfg.eval.gate.on_fail == "stop":
                print(f"[iter {k}] eval.gate.on_fail: stop: the run ends here", flush=True)
                break
    finally:
        tracker.finish()
    state = artifacts.read_state(run_dir)
    print(f"{run_dir}: done; promoted iteration {state['promoted_iteration']}", flush=True)
    return run_dir
