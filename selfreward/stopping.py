"""The stop state of this process: stop signals, the stop budget, and work that a stop may abandon.

Contract:
- Imports nothing of selfreward: every module (records' shards, training's callbacks, the lifecycle, launch's
  stage children) reads and sets the stop state here, and none of them is imported to get it.
- SIGTERM / SIGUSR1 / SIGUSR2 (`install_preemption_handlers`) set the flag (`stop_requested`, `stop_signal`) and
  start the stop budget (`set_stop_budget`, from `launch.stop_within_s`, or $SELFREWARD_STOP_WITHIN): sharded
  work stops at its next shard boundary, training after the optimizer step in flight (every rank after the same
  step, `stop_on_all_ranks`). A shard in flight (`abandonable`) is finished when it can end within the budget
  and abandoned (raising `ShardAbandoned`, redone on resume) when it cannot: on the signal when its expected
  end is past the budget, at the latest when 80% of the budget has gone.
- A stop signal is forwarded to the process group of every stage child registered with `forwarding_to`
  (one that arrived before the child existed is sent to it at once).
- `Preempted` is what stopped work raises: what was complete is written, and rerunning resumes it.
"""
from __future__ import annotations

import atexit
import os
import signal
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_STOP_WITHIN_S = 25.0  # below SLURM's default KillWait (30 s) between SIGTERM and SIGKILL
ABANDON_AT = 0.8  # a shard still running when this share of the stop budget has gone is abandoned


class Preempted(RuntimeError):
    """A stop signal arrived: what was complete is written, the stage stopped; rerunning resumes it."""


class ShardAbandoned(Preempted):
    """The shard in flight could not finish within the stop budget: it was dropped, and is redone on resume."""


_stop_requested: list[int] = []  # signal numbers received (or learnt from another rank), first first
_stop_at: list[float] = []  # monotonic time of the first stop signal
_budget: list[float] = [DEFAULT_STOP_WITHIN_S]
_inflight: list[tuple[str, float, float | None]] = []  # (label, started, expected seconds) of abandonable work
_children: list[int] = []  # process groups of running stage children: stop signals are forwarded to them


def set_stop_budget(seconds: float) -> None:
    """Seconds from a stop signal to exit that the run aims for (`launch.stop_within_s`)."""
    _budget[0] = float(seconds)


def stop_budget() -> float:
    """$SELFREWARD_STOP_WITHIN wins over the recipe (for one job whose scheduler kills sooner than the recipe
    assumes; the shipped sbatch scripts do not set it)."""
    env = os.environ.get("SELFREWARD_STOP_WITHIN")
    return float(env) if env else _budget[0]


def _say(text: str) -> None:
    os.write(2, f"selfreward: {text}\n".encode())  # safe inside a signal handler, unlike print


def _on_signal(signum, _frame) -> None:
    first = not _stop_requested
    _stop_requested.append(signum)
    for pgid in list(_children):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass
    if first:
        _stop_at.append(time.monotonic())
        signal.setitimer(signal.ITIMER_REAL, max(ABANDON_AT * stop_budget(), 0.01))
        _say(f"{signal.Signals(signum).name} received: stopping within {stop_budget():.0f}s "
             f"(finishing the shard or step in flight if it fits)")
    _abandon_if_late(force=False)


def _on_alarm(_signum, _frame) -> None:
    _abandon_if_late(force=True)


def _abandon_if_late(force: bool) -> None:
    if not _inflight or not _stop_requested:
        return
    label, started, expected = _inflight[-1]
    limit = _stop_at[0] + ABANDON_AT * stop_budget()
    if force or (expected is not None and started + expected > limit):
        _disarm()
        why = "the stop budget ran out" if force else f"it was expected to need {expected:.1f}s"
        raise ShardAbandoned(f"{label} abandoned on signal {stop_signal()} ({why}); it is redone on resume")


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def install_preemption_handlers() -> None:
    """SLURM sends SIGUSR2/SIGUSR1 (--signal) or SIGTERM before preemption: finish in time, then stop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    atexit.register(_disarm)  # interpreter shutdown restores SIGALRM's default action, which kills


def stop_requested() -> bool:
    return bool(_stop_requested)


def stop_signal() -> int | None:
    return _stop_requested[0] if _stop_requested else None


def request_stop(signum: int) -> None:
    """Stop as if `signum` had arrived here (another rank received it)."""
    if not _stop_requested:
        _stop_at.append(time.monotonic())
    _stop_requested.append(signum)


def clear_stop() -> None:
    _disarm()
    _stop_requested.clear()
    _stop_at.clear()
    _inflight.clear()


@contextmanager
def abandonable(label: str, expected_s: float | None):
    """Work that a stop signal may abandon (raising ShardAbandoned) when it cannot end within the budget."""
    _inflight.append((label, time.monotonic(), expected_s))
    try:
        _abandon_if_late(force=False)
        yield
    finally:
        if _inflight:
            _inflight.pop()


@contextmanager
def forwarding_to(pgid: int):
    """While open, stop signals are forwarded to process group `pgid` (a stage child in its own session); a
    signal that arrived before the child existed is sent to it at once."""
    _children.append(pgid)
    try:
        if _stop_requested:
            try:
                os.killpg(pgid, _stop_requested[0])
            except ProcessLookupError:
                pass
        yield
    finally:
        _children.remove(pgid)


def stop_on_all_ranks(device=None) -> bool:
    """Whether any rank was asked to stop. A collective under torch.distributed: every rank calls it at the
    same point (after each optimizer step), so all ranks stop after the same step."""
    local = stop_signal() or 0
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return bool(local)
    if not (dist.is_available() and dist.is_initialized()):
        return bool(local)
    flag = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    signum = int(flag.item())
    if signum and not local:
        request_stop(signum)
    return bool(signum)
