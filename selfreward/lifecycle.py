"""One stage lifecycle for every stage: identity, skip, conflict, --force, work, manifest last.

Contract: a stage package declares a `Stage` (its name, the config keys it reads, the stages of the same
iteration whose outputs it reads, whether it depends on the parent model) and supplies only its work,
`run(cfg, iter_dir) -> Outputs`. `execute` then:
1. derives the stage's identity from those config values (files by content, operational keys removed by
   `config.OPERATIONAL`) and its upstream manifests' hashes;
2. returns the existing manifest when it matches; raises `StageConflict` naming the changed keys when it
   does not; with --force sets the old stage directory aside (renamed, never deleted);
3. runs the work in this process, or in a child process (`launch.mode: subprocess`); a failure other than a
   stop signal is recorded in `<stage>/error.json` (exit code, type, first line of the message) before it
   propagates, and removed when the stage is attempted again;
4. writes `manifest.json` last, atomically.
`stage_main(stage)` is the entry of the child process (`python -m selfreward.<stage> RUN_DIR K`): the parent
ran the checks, the child does the work and writes the manifest; a failure that an exit code carries
(`exits`) is recorded in `error.json` on every rank before the process exits with that code.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfreward import artifacts, config as config_mod, launch, stopping
from selfreward.exits import CARRIED, EXIT_ITERATION_ENDED, IterationEnded, code_of
from selfreward.records import read_json, write_json


@dataclass
class Outputs:
    """What a stage's work produced: named output paths (files or directories) and summary metrics."""
    paths: dict[str, Path]
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str  # also the stage directory inside the iteration directory
    reads: tuple[str, ...]  # dotted config keys or whole sections whose values decide the output
    run: Callable[..., Outputs]  # run(cfg, iter_dir) -> Outputs
    summary: Callable[[dict], str]  # one line from a manifest, printed by the loop
    upstream: tuple[str, ...] = ()  # stages of the same iteration whose outputs it reads
    lineage: bool = False  # depends on the parent model M(k-1)
    extra: Callable[..., dict] | None = None  # extra(cfg, iter_dir) -> other inputs (earlier iterations' files)


def _pick(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        node = node[part]
    return node


def identity(stage: Stage, cfg, iter_dir: Path) -> dict:
    """What decides a stage's output; its hash is the manifest's config_hash."""
    resolved = config_mod.identity(cfg.model_dump(mode="json"))
    ident: dict = {key: _pick(resolved, key) for key in stage.reads}
    for name in stage.upstream:
        ident[f"upstream.{name}"] = read_json(Path(iter_dir) / name / "manifest.json")["config_hash"]
    if stage.lineage:
        ident["lineage"] = artifacts.lineage_config(iter_dir)
    if stage.extra is not None:
        ident.update(stage.extra(cfg, Path(iter_dir)))
    return ident


def execute(stage: Stage, cfg, iter_dir: Path, force: bool = False) -> dict:
    """Run a stage unless its manifest already matches; returns the manifest."""
    stage_dir = Path(iter_dir) / stage.name
    ident = identity(stage, cfg, iter_dir)
    done = artifacts.existing(stage_dir, ident, force)
    if done:
        return done
    error = stage_dir / "error.json"
    if error.exists():
        error.unlink()  # an earlier attempt's failure: this attempt decides
    try:
        if cfg.launch.mode == "subprocess":
            launch.run_child(launch.stage_command(cfg, stage.name, Path(iter_dir)), stage_dir)
            return read_json(stage_dir / "manifest.json")
        return complete(stage, cfg, iter_dir, ident)
    except stopping.Preempted:
        raise  # stopped, not failed: rerunning resumes it
    except Exception as e:  # what `selfreward status` shows as failed; the exception goes on
        code = EXIT_ITERATION_ENDED if isinstance(e, IterationEnded) else 1
        message = (str(e).splitlines() or [type(e).__name__])[0]
        write_json(error, {"exit_code": code, "type": type(e).__name__, "message": message})
        raise


def complete(stage: Stage, cfg, iter_dir: Path, ident: dict | None = None) -> dict:
    """The work and the manifest, without the checks (a child process: its parent ran them)."""
    from selfreward.engine import TOKENS

    started, before = time.time(), dict(TOKENS)
    ident = ident if ident is not None else identity(stage, cfg, iter_dir)
    out = stage.run(cfg, Path(iter_dir))
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate only rank 0 records the stage
        return {}
    # inference tokens of this stage (training reports its own in its metrics)
    tokens = {k: TOKENS[k] - before[k] for k in TOKENS}
    return artifacts.write_manifest(Path(iter_dir) / stage.name, stage.name, ident, out.paths, out.metrics,
                                    started, tokens if any(tokens.values()) else None)


def stage_main(stage: Stage) -> None:
    """Entry of `python -m selfreward.<stage> RUN_DIR ITERATION`: the stage's work in this process.

    The parent already ran the lifecycle checks (skip, conflict, --force); the child does the work and writes
    the manifest (rank 0 under accelerate).
    """
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m selfreward.{stage.name}")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("iteration", type=int)
    args = parser.parse_args()
    stopping.install_preemption_handlers()
    cfg = config_mod.from_run_yaml(args.run_dir / "run.yaml")
    stopping.set_stop_budget(cfg.launch.stop_within_s)
    iter_dir = artifacts.iteration_dir(args.run_dir, args.iteration)
    try:
        complete(stage, cfg, iter_dir)
    except CARRIED as e:
        code = code_of(e)
        write_json(iter_dir / stage.name / "error.json",
                   {"exit_code": code, "type": type(e).__name__, "message": str(e)})
        print(f"{stage.name}: {e}", file=sys.stderr)
        _barrier()  # every rank raised the same error: none exits (and srun kills none) before the record exists
        sys.exit(code)


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
