"""A run directory as a user sees it: each iteration's stages, the promoted model, oversight and the last gate.

Contract: read-only. `open_run(path)` returns the run directory or raises RecipeError (one line) when the path
is not one (no run.yaml or state.json); a run.yaml or state.json that does not parse raises RecipeError too.
A stage is `done` when its manifest exists and every output it lists has the recorded sha256 (`damaged` when
one does not); `running` only while the
run lock (runlock.py) is held by a live process and the stage has started without finishing (the first such
stage: the loop runs one stage at a time); `failed` when it recorded an error (`error.json`, written by the
lifecycle) or when its iteration ended while it was unfinished; `skipped` after a failed stage of an ended
iteration; `partial` when it started and stopped (a kill or a preemption: rerunning resumes it); `pending` when
it has not started. `status` and `report` read runs through this module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from selfreward import artifacts, oversight, runlock
from selfreward.config import RecipeError
from selfreward.exits import EXIT_PREEMPTED
from selfreward.records import DamagedFile, read_json

STAGES = ("data_gen", "judge", "train", "eval")  # the loop's order


@dataclass
class Cell:
    state: str  # done | damaged | running | failed | skipped | partial | pending | - (no such stage)
    detail: str = ""  # wall time of a done stage, the error of a failed one


def open_run(path: str | Path) -> Path:
    run_dir = Path(path)
    if not (run_dir / "run.yaml").is_file() or artifacts.read_state(run_dir) is None:
        raise RecipeError(f"{run_dir}: not a run directory (no run.yaml/state.json)")
    recipe(run_dir)  # a damaged run.yaml is one line here, not a traceback later
    return run_dir


def recipe(run_dir: Path) -> dict:
    """run.yaml as written (not validated: a report of an older run must not depend on today's schema)."""
    path = Path(run_dir) / "run.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise DamagedFile(f"{path}: damaged: not the YAML mapping selfreward wrote")
    return data


def iterations(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("iter_[0-9][0-9][0-9]"))


def live_holder(run_dir: Path) -> dict | None:
    """Who holds the run lock, when that process (or SLURM job) is alive."""
    try:
        holder = json.loads((Path(run_dir) / runlock.LOCK_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) and holder and runlock.holder_alive(holder) else None


def _error(stage_dir: Path) -> dict | None:
    path = stage_dir / "error.json"
    return read_json(path) if path.exists() else None


def _cell(stage_dir: Path) -> Cell:
    if (stage_dir / "manifest.json").exists():
        manifest = read_json(stage_dir / "manifest.json")
        bad = artifacts.damaged_outputs(stage_dir, manifest)
        if bad:
            return Cell("damaged", f"{bad[0].relative_to(stage_dir)}")
        return Cell("done", f"{manifest.get('wall_time_s', 0):.0f}s")
    err = _error(stage_dir)
    if err is not None and err.get("exit_code") != EXIT_PREEMPTED:
        return Cell("failed", err.get("message", ""))
    if stage_dir.exists():
        return Cell("partial", "stopped; rerunning resumes it")
    return Cell("pending")


def iteration_cells(iter_dir: Path, outcome: dict | None) -> dict[str, Cell]:
    """Iteration 0 is M0's baseline eval, and in the train column the SFT bootstrap when the recipe has one."""
    if artifacts.iteration_of(iter_dir) == 0:
        dirs = {"train": "sft", "eval": "eval"} if (iter_dir / "sft").exists() else {"eval": "eval"}
    else:
        dirs = {name: name for name in STAGES}
    cells = {name: _cell(iter_dir / d) for name, d in dirs.items()}
    names = list(dirs)
    if outcome is not None:  # the iteration ended: its first unfinished stage is why, the rest never ran
        unfinished = [n for n in names if cells[n].state not in ("done", "damaged")]
        for i, name in enumerate(unfinished):
            detail = cells[name].detail if cells[name].state == "failed" else "; ".join(outcome.get("reasons", []))
            cells[name] = Cell("failed", detail) if i == 0 else Cell("skipped")
    return {name: cells.get(name, Cell("-")) for name in STAGES}


def table(run_dir: Path) -> list[tuple[Path, dict[str, Cell], str]]:
    """(iteration directory, stage -> cell, outcome) for each iteration, with the running stage marked."""
    rows = []
    for iter_dir in iterations(run_dir):
        outcome_path = iter_dir / "outcome.json"
        outcome = read_json(outcome_path) if outcome_path.exists() else None
        cells = iteration_cells(iter_dir, outcome)
        if outcome is not None:
            verdict = "promoted" if outcome["promoted"] else "not promoted"
        elif (iter_dir / "review.json").exists():
            verdict = "awaiting a human decision"
        else:
            verdict = "baseline (M0)" if artifacts.iteration_of(iter_dir) == 0 and cells["eval"].state == "done" else ""
        rows.append((iter_dir, cells, verdict))
    if live_holder(run_dir) is not None:
        for _, cells, _ in rows:
            started = next((c for c in cells.values() if c.state == "partial"), None)
            if started is not None:
                started.state, started.detail = "running", ""
                break
    return rows


def last_gate(run_dir: Path) -> tuple[int, dict] | None:
    """The newest iteration's gate decision (eval/decision.json)."""
    for iter_dir in reversed(iterations(run_dir)):
        path = iter_dir / "eval" / "decision.json"
        if path.exists():
            return artifacts.iteration_of(iter_dir), read_json(path)
    return None


def oversight_line(run_dir: Path) -> str:
    mode = (recipe(run_dir).get("run") or {}).get("oversight", "auto")
    waiting = oversight.awaiting(run_dir)
    line = "manual (a human approves each gated candidate)" if mode == "manual" else "auto (the gate decides)"
    if waiting is not None:
        line += (f"; iteration {waiting} waits for a human: selfreward approve|reject {run_dir} "
                 f"--iteration {waiting} --reason \"...\"")
    decided = [h for h in artifacts.read_state(run_dir)["history"] if h.get("decided_by")]
    if decided:
        h = decided[-1]
        line += f"; last human decision: iteration {h['iteration']} {h['decision']} by {h['decided_by']}"
    return line


def lock_line(run_dir: Path) -> str:
    holder = live_holder(run_dir)
    if holder is None:
        return "no process is writing the run"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"written by pid {holder.get('pid')} on {holder.get('host')}{job} since {holder.get('started')}"
