"""`selfreward run | status | validate`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the sbatch script requeues the job on this code


def _quiet_libraries() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cmd_validate(args) -> int:
    from selfreward import config
    from train.dpo import build_dpo_config

    cfg = config.load(args.recipe, args.overrides)
    try:
        build_dpo_config(cfg, str(cfg.run_dir() / "validate-tmp"))
    except (TypeError, ValueError) as e:
        raise config.RecipeError(f"{args.recipe}: train.dpo_overrides: {str(e).splitlines()[0]}") from None
    print(f"{args.recipe}: ok ({cfg.run.iterations} iterations, model {cfg.model.ref}, "
          f"{cfg.data_gen.num_prompts} prompts x {cfg.data_gen.n_responses} responses, run dir {cfg.run_dir()})")
    return 0


def cmd_run(args) -> int:
    from selfreward import config, loop
    from selfreward.records import install_preemption_handlers

    cfg = config.load(args.recipe, args.overrides)
    if cfg.train.dpo_overrides:
        cmd_validate(args)  # TRL validates the overrides before anything loads
    install_preemption_handlers()
    loop.run(cfg, force=args.force)
    return 0


def cmd_status(args) -> int:
    from selfreward import artifacts
    from selfreward.config import RecipeError
    from selfreward.records import read_json

    run_dir = Path(args.run)
    if run_dir.is_file():  # a recipe: its run directory
        from selfreward import config

        run_dir = config.load(run_dir).run_dir()
    state = artifacts.read_state(run_dir)
    if state is None or not (run_dir / "run.yaml").exists():
        raise RecipeError(f"{run_dir}: not a run directory (no run.yaml/state.json)")
    print(f"run {run_dir}: promoted iteration {state['promoted_iteration']} "
          f"({state['adapter'] or state['model']})")
    for iter_dir in sorted(run_dir.glob("iter_[0-9][0-9][0-9]")):
        stages = []
        for name in ("data_gen", "judge", "train", "eval"):
            m = iter_dir / name / "manifest.json"
            if m.exists():
                stages.append(f"{name} done ({read_json(m)['wall_time_s']:.0f}s)")
            elif (iter_dir / name).exists():
                stages.append(f"{name} partial")
        outcome = iter_dir / "outcome.json"
        verdict = ""
        if outcome.exists():
            o = read_json(outcome)
            verdict = f" -> {'promoted' if o['promoted'] else 'not promoted'}: {'; '.join(o['reasons'])}"
        print(f"  {iter_dir.name}: {', '.join(stages) or 'not started'}{verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfreward", description="Self-rewarding language model loop.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) the loop of a recipe")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.beta=0.05")
    p.add_argument("--force", action="store_true", help="redo stages whose config changed")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("validate", help="check a recipe (and build its DPOConfig) without loading a model")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("status", help="show the stages and gate decisions of a run directory (or a recipe's)")
    p.add_argument("run")
    p.set_defaults(fn=cmd_status)
    args = parser.parse_args(argv)
    _quiet_libraries()

    from selfreward.artifacts import StageConflict
    from selfreward.config import RecipeError
    from selfreward.models import ModelRefError
    from selfreward.records import Preempted

    try:
        return args.fn(args)
    except (RecipeError, StageConflict, ModelRefError) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as e:
        print(f"selfreward: preempted: {e}; run the same command again to resume", file=sys.stderr)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
