"""Scheduler jobs: one stage of one iteration as a job, and the facts sbatch scripts need about a recipe.

Contract:
- `python -m selfreward.jobs info RECIPE [key=value ...] [--shell] [--config-only]` validates the recipe as
  `selfreward validate` does (with --config-only, its form and files only: the checks that need a stage's library,
  about 5 s of imports, are left to the job's next command, which runs them before anything loads) and checks it
  against the allocation it runs in (the tensor-parallel size must divide the GPUs per node);
  it prints the git commit and the resolved config; with --shell as `#` comment lines followed by `NAME=value`
  lines (RUN_DIR, RUN_NAME, ITERATIONS, TP, LAUNCH_MODE, ACCELERATE_CONFIG, GPUS_PER_NODE, TRAIN_NODES, COMMIT)
  that a script can `eval`. A mistake is one line and exit code 2; nothing is written.
- `python -m selfreward.jobs stage RECIPE STAGE ITERATION [key=value ...] [--force]` runs one stage
  (`baseline` with iteration 0, or data_gen, judge, train, eval) through the same lifecycle as `selfreward
  run`: it holds the run directory's lock, skips a finished stage, refuses a stage whose upstream stage has
  not finished, and `eval` concludes the iteration (gate, promotion). An iteration that ended early (no pairs,
  a NaN loss) is concluded unpromoted and later stages of it exit 0 as done, so the chain goes on from the
  promoted model. Exit codes are `exits`': 0, 2, 75 (preempted: requeue).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from selfreward import artifacts, launch, lifecycle, stopping
from selfreward.config import RecipeError
from selfreward.exits import IterationEnded

STAGES = ("baseline", "data_gen", "judge", "train", "eval")


def _load(recipe: str, overrides: list[str], offline_hub_ok: bool = False, library_checks: bool = True):
    from selfreward import config, loop

    cfg = config.load(recipe, overrides, offline_hub_ok)
    if library_checks:
        loop.check_recipe(cfg, recipe)
    return cfg


def check_allocation(cfg, env=os.environ) -> None:
    """What the recipe asks of the allocation it runs in: vLLM's tensor-parallel size divides the GPUs."""
    gpus = env.get("SLURM_GPUS_ON_NODE", "")
    tp = cfg.model.tensor_parallel_size
    if gpus.isdigit() and int(gpus) > 0 and int(gpus) % tp:
        raise RecipeError(f"model.tensor_parallel_size: {tp} does not divide the {gpus} GPUs per node of this "
                          f"allocation (SLURM_GPUS_ON_NODE)")
    if gpus.isdigit() and int(gpus) == 0 and tp > 1:
        raise RecipeError(f"model.tensor_parallel_size: {tp} needs GPUs, and this allocation has none")


def cmd_info(args) -> int:
    import contextlib
    import io
    import shlex

    from selfreward.config import dump

    with contextlib.redirect_stdout(io.StringIO()):  # what libraries print on import is noise to a script
        cfg = _load(args.recipe, args.overrides, args.offline_hub_ok, library_checks=not args.config_only)
        check_allocation(cfg)
    facts = {"RUN_DIR": str(Path(os.path.abspath(cfg.run_dir()))), "RUN_NAME": cfg.run.name,
             "ITERATIONS": str(cfg.run.iterations), "TP": str(cfg.model.tensor_parallel_size),
             "COMMIT": artifacts.git_commit() or "unknown", "LAUNCH_MODE": cfg.launch.mode,
             "ACCELERATE_CONFIG": cfg.launch.accelerate_config or "",
             "GPUS_PER_NODE": str(cfg.launch.gpus_per_node), "TRAIN_NODES": str(cfg.launch.train_nodes)}
    lines = [f"selfreward {args.recipe} {' '.join(args.overrides)}".rstrip()
             + f" (git commit {facts['COMMIT']}); run directory {facts['RUN_DIR']}", *dump(cfg).splitlines()]
    if not args.shell:
        print("\n".join(lines))
        return 0
    print("\n".join("# " + line for line in lines))
    print("\n".join(f"{key}={shlex.quote(value)}" for key, value in facts.items()))
    return 0


def run_stage(cfg, name: str, k: int, force: bool) -> str:
    """One stage of iteration k through the lifecycle; returns a one-line summary of what happened."""
    from selfreward import loop, stale
    from selfreward.tracking import Tracker

    run_dir = loop.prepare_run_dir(cfg, force)
    tracker = Tracker(cfg, run_dir)
    try:
        if name == "baseline":
            loop.bootstrap(cfg, run_dir, force, tracker)  # the SFT bootstrap (sft.enabled) comes first
            base = loop.baseline_stage()
            return base.summary(lifecycle.execute(base, cfg, artifacts.iteration_dir(run_dir, 0), force))
        iter_dir = artifacts.iteration_dir(run_dir, k)
        if (iter_dir / "outcome.json").exists() and not force:
            return f"iteration {k} is already concluded; {name} has nothing to do"
        stages = {s.name: s for s in loop.stages()}
        # judge reads M0's probe answers (its consistency set), eval compares against M0's metrics
        if name in ("judge", "eval") and not (artifacts.iteration_dir(run_dir, 0) / "eval" / "manifest.json").exists():
            raise RecipeError(f"{run_dir}: run the baseline stage (iteration 0) before {name}")
        for up in stages[name].upstream:
            if not (iter_dir / up / "manifest.json").exists():
                raise RecipeError(f"{iter_dir}: stage {up} has not finished; run it before {name}")
        if name == "eval":  # eval concludes the iteration: the loop's own code does it (gate, promotion)
            return f"iteration {k}: {loop.run_iteration(cfg, run_dir, k, force, tracker)}"
        iter_dir = loop.start_iteration(run_dir, k)
        stale.before_stage(stages[name], cfg, iter_dir, force)
        try:
            manifest = lifecycle.execute(stages[name], cfg, iter_dir, force)
        except IterationEnded:
            # the loop concludes it (the stages before this one are skipped, this one ends it again)
            return f"iteration {k}: {loop.run_iteration(cfg, run_dir, k, force, tracker)} at {name}"
        tracker.log(k, name, manifest)
        return stages[name].summary(manifest)
    finally:
        tracker.finish()


def cmd_stage(args) -> int:
    if args.stage == "baseline" and args.iteration != 0 or args.stage != "baseline" and args.iteration < 1:
        raise RecipeError(f"stage {args.stage} with iteration {args.iteration}: the baseline is iteration 0, "
                          f"the other stages run in iterations 1 and later")
    cfg = _load(args.recipe, args.overrides)
    if args.iteration > cfg.run.iterations:
        raise RecipeError(f"iteration {args.iteration}: the recipe runs {cfg.run.iterations} iteration(s)")
    check_allocation(cfg)
    stopping.install_preemption_handlers()
    print(f"[iter {args.iteration}] {run_stage(cfg, args.stage, args.iteration, args.force)}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m selfreward.jobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="validate a recipe for this allocation; print its config, or shell facts")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--shell", action="store_true", help="print NAME=value lines for a shell script")
    p.add_argument("--offline-hub-ok", action="store_true",
                   help="a hub id HF_HUB_OFFLINE=1 keeps from being fetched passes on its form (submit.sh --dry-run)")
    p.add_argument("--config-only", action="store_true",
                   help="validate the recipe's own form and files, not what needs a stage's library (TRL's "
                        "DPOConfig, IFEval's checkers, the datasets): for a job whose next command checks those")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("stage", help="run one stage of one iteration")
    p.add_argument("recipe")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("iteration", type=int)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--force", action="store_true", help="redo the stage if its config changed")
    p.set_defaults(fn=cmd_stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in (("TOKENIZERS_PARALLELISM", "false"), ("VLLM_LOGGING_LEVEL", "ERROR"),
                       ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(key, value)
    return launch.exit_code_of(args.fn, args, "the job is requeued and resumes")


if __name__ == "__main__":
    sys.exit(main())
