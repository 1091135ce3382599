"""The run directory lock: one live process writes a run directory at a time.

Contract: `acquire(run_dir)` creates `<run_dir>/run.lock` (O_EXCL) holding the pid, host, start time and SLURM
job id of this process, and removes it at exit. A lock held by a live process is refused with `RunLocked`
(one line: who holds it and how to proceed). A stale lock is taken over: its process is gone (same host), its
SLURM job is no longer running (another host), or it is an earlier run of this very job (a requeued job keeps
its id). Taking the lock again in the process that holds it is a no-op. Stage children do not lock: their
parent holds the lock.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from selfreward.config import RecipeError

LOCK_NAME = "run.lock"
_held: set[Path] = set()


class RunLocked(RecipeError):
    """Another live process (or SLURM job) is writing this run directory (a user mistake: exit code 2)."""


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job_running(job_id: str) -> bool | None:
    """Whether a SLURM job is still pending or running; None when SLURM cannot be asked."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


def holder_alive(holder: dict) -> bool:
    me = _me()
    job = holder.get("slurm_job_id")
    if job and job == me["slurm_job_id"] and holder.get("slurm_restart") != me["slurm_restart"]:
        return False  # an earlier run of this requeued job
    if holder.get("host") == me["host"]:
        return _pid_alive(int(holder.get("pid", -1)))
    if job:
        running = _job_running(job)
        return True if running is None else running
    return True  # another host, no job to ask about: assume it is alive


def _describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


def _read(path: Path) -> dict | None:
    """The holder recorded in a lock file; {} for an unreadable one (a creator dies between open and write)."""
    for _ in range(2):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            time.sleep(0.5)  # created this instant and not yet written: look again
    return {}


def acquire(run_dir: Path) -> None:
    """Take the run directory's lock or raise RunLocked naming its live holder."""
    path = Path(run_dir) / LOCK_NAME
    if path in _held:
        return
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                _held.add(path)
                return
            if holder and holder_alive(holder):
                raise RunLocked(f"{run_dir} is in use by {_describe(holder)}; wait for it to end (or scancel "
                                f"it), or remove {path} if that process is gone") from None
            _take_over(path, holder)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        _held.add(path)
        atexit.register(release, run_dir)
        return
    raise RunLocked(f"{path}: could not take the lock (other processes keep taking it)")


def _take_over(path: Path, stale: dict) -> None:
    """Set a stale lock aside; if what was set aside is not that stale lock (another process took it over and
    locked first), put it back."""
    aside = path.with_name(f".{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != stale:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    os.unlink(aside)


def release(run_dir: Path) -> None:
    path = Path(run_dir) / LOCK_NAME
    if path not in _held:
        return
    _held.discard(path)
    try:
        holder = json.loads(path.read_text())
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass
