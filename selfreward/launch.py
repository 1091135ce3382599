"""Processes: exit codes, preemption signals, stage child processes and the `accelerate launch` command.

Contract:
- Exit codes of `selfreward` and of `python -m selfreward.<stage>` are defined here and nowhere else:
  0 done, 2 a user mistake (bad recipe, conflicting stage), 3 the iteration ended without promotion,
  75 (EX_TEMPFAIL) preempted, to be requeued by the scheduler.
- SIGTERM / SIGUSR1 only set a flag (`stop_requested`); sharded work and training check it at their
  boundaries, write what is complete and raise `Preempted`.
- A stage child reports its known failures through `<stage_dir>/error.json`, which `run_child` turns back
  into the same exceptions an in-process run raises, so the loop handles both modes alike.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_ITERATION_ENDED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the sbatch script requeues the job on this code


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived: the shard or step in flight was finished and written, then the stage stopped."""


class StageConflict(RuntimeError):
    """A stage's manifest exists with a different config hash and --force was not given."""


class IterationEnded(RuntimeError):
    """A stage found nothing to go on with (no prompts, no pairs, a NaN loss): the iteration ends unpromoted."""


_stop_requested: list[int] = []


def install_preemption_handlers() -> None:
    """SLURM sends SIGTERM (or SIGUSR1 with --signal) before preemption: finish the shard, then stop."""
    def handler(signum, _frame):
        _stop_requested.append(signum)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def stop_requested() -> bool:
    return bool(_stop_requested)


def stop_signal() -> int | None:
    return _stop_requested[0] if _stop_requested else None


def clear_stop() -> None:
    _stop_requested.clear()


_CODES = ((StageConflict, EXIT_USER_ERROR), (IterationEnded, EXIT_ITERATION_ENDED), (Preempted, EXIT_PREEMPTED))


def stage_main(stage) -> None:
    """Entry of `python -m selfreward.<stage> RUN_DIR ITERATION`: the stage's work in this process.

    The parent already ran the lifecycle checks (skip, conflict, --force); the child does the work and writes
    the manifest (rank 0 under accelerate).
    """
    import argparse

    from selfreward import artifacts, lifecycle
    from selfreward.config import from_run_yaml
    from selfreward.records import write_json

    parser = argparse.ArgumentParser(prog=f"python -m selfreward.{stage.name}")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("iteration", type=int)
    args = parser.parse_args()
    install_preemption_handlers()
    cfg = from_run_yaml(args.run_dir / "run.yaml")
    iter_dir = artifacts.iteration_dir(args.run_dir, args.iteration)
    try:
        lifecycle.complete(stage, cfg, iter_dir)
    except tuple(c for c, _ in _CODES) as e:
        code = next(code for c, code in _CODES if isinstance(e, c))
        write_json(iter_dir / stage.name / "error.json",
                   {"exit_code": code, "type": type(e).__name__, "message": str(e)})
        print(f"{stage.name}: {e}", file=sys.stderr)
        sys.exit(code)


def run_child(cmd: list[str], stage_dir: Path) -> None:
    """Run a stage's process; its known failures come back as the same exceptions as in-process."""
    from selfreward.records import read_json

    error = stage_dir / "error.json"
    if error.exists():
        error.unlink()
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    # a launcher (accelerate/torchrun) reports any failed rank as 1: the stage's own record says what it was
    record = read_json(error) if error.exists() else {"exit_code": rc, "message": f"exited with code {rc}"}
    kinds = {code: kind for kind, code in _CODES}
    if record["exit_code"] in kinds:
        raise kinds[record["exit_code"]](record["message"])
    if rc != 0 or not (stage_dir / "manifest.json").exists():
        raise RuntimeError(f"stage {stage_dir.name} {record['message']}: {' '.join(cmd)}")


def world_size(cfg) -> int:
    """Processes training runs on: with batch size and accumulation it fixes the effective batch."""
    if cfg.launch.mode != "subprocess" or not cfg.launch.accelerate_config:
        return 1
    import yaml

    launch = yaml.safe_load(Path(cfg.launch.accelerate_config).read_text()) or {}
    return cfg.launch.num_processes or int(launch.get("num_processes", 1))


def stage_command(cfg, name: str, iter_dir: Path) -> list[str]:
    """The child process of a stage: `python -m selfreward.<name>`, or for training with an accelerate config,
    `accelerate launch --config_file <config> -m selfreward.train`."""
    from selfreward.artifacts import iteration_of

    stage_args = ["-m", f"selfreward.{name}", str(iter_dir.parent), str(iteration_of(iter_dir))]
    if name != "train" or not cfg.launch.accelerate_config:
        return [sys.executable, *stage_args]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.launch.accelerate_config]
    if cfg.launch.num_processes:
        cmd += ["--num_processes", str(cfg.launch.num_processes)]
    return cmd + stage_args
