"""Processes: exit codes, preemption signals, stage child processes and the `accelerate launch` command.

Contract:
- Exit codes of `selfreward` and of `python -m selfreward.<stage>` are defined here and nowhere else:
  0 done, 2 a user mistake (bad recipe, conflicting stage, a run directory locked by a live process),
  3 the iteration ended without promotion, 75 (EX_TEMPFAIL) preempted, to be requeued by the scheduler.
- SIGTERM / SIGUSR1 / SIGUSR2 set a flag (`stop_requested`) and start the stop budget (`launch.stop_within_s`,
  or $SELFREWARD_STOP_WITHIN): sharded work stops at its next shard boundary, training after the optimizer
  step in flight (every rank after the same step). A shard in flight (`abandonable`) is finished when it can
  end within the budget and abandoned (raising `ShardAbandoned`, redone on resume) when it cannot: on the
  signal when its expected end is past the budget, at the latest when 80% of the budget has gone.
- A stage child runs in its own process group; a stop signal is forwarded to the whole group, and the parent
  waits for the group to be gone before it reads the child's record. Torchrun (under `accelerate launch`)
  forwards SIGUSR1/SIGUSR2 to its workers too (`PET_SIGNALS_TO_HANDLE`).
- A stage child reports its known failures through `<stage_dir>/error.json`, which `run_child` turns back
  into the same exceptions an in-process run raises, so the loop handles both modes alike.
- Inside a SLURM allocation of several nodes, training starts through `srun`: one `accelerate launch` per
  node, the main node's address from `scontrol show hostnames`, the machine rank from each task's own
  `$SLURM_NODEID`, and the process count from the allocation (`srun_accelerate`).
"""
from __future__ import annotations

import atexit
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_ITERATION_ENDED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the sbatch script requeues the job on this code

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_STOP_WITHIN_S = 25.0  # below SLURM's default KillWait (30 s) between SIGTERM and SIGKILL
ABANDON_AT = 0.8  # a shard still running when this share of the stop budget has gone is abandoned


class Preempted(RuntimeError):
    """A stop signal arrived: what was complete is written, the stage stopped; rerunning resumes it."""


class ShardAbandoned(Preempted):
    """The shard in flight could not finish within the stop budget: it was dropped, and is redone on resume."""


class StageConflict(RuntimeError):
    """A stage's manifest exists with a different config hash and --force was not given."""


class IterationEnded(RuntimeError):
    """A stage found nothing to go on with (no prompts, no pairs, a NaN loss): the iteration ends unpromoted."""


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


_CODES = ((StageConflict, EXIT_USER_ERROR), (IterationEnded, EXIT_ITERATION_ENDED), (Preempted, EXIT_PREEMPTED))


def exit_code_of(command, args, resume_hint: str) -> int:
    """Run a command-line entry (`selfreward ...`, `python -m selfreward.jobs ...`) and map its failures to
    exit codes: a user mistake (bad recipe, stage conflict, bad model reference, a locked run directory) is
    one line `selfreward: error: ...` and 2; a preemption is one line ending with `resume_hint` and 75."""
    from selfreward.config import RecipeError
    from selfreward.models import ModelRefError
    from selfreward.records import DamagedFile

    try:
        return command(args)
    except (RecipeError, StageConflict, ModelRefError, DamagedFile) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as e:
        print(f"selfreward: preempted: {e}; {resume_hint}", file=sys.stderr)
        return EXIT_PREEMPTED


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
    set_stop_budget(cfg.launch.stop_within_s)
    iter_dir = artifacts.iteration_dir(args.run_dir, args.iteration)
    try:
        lifecycle.complete(stage, cfg, iter_dir)
    except tuple(c for c, _ in _CODES) as e:
        code = next(code for c, code in _CODES if isinstance(e, c))
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


def _child_env() -> dict:
    env = dict(os.environ)
    # torchrun forwards these to its workers (which run in their own sessions) instead of dying of them
    env.setdefault("PET_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2")
    # ...and waits this long for them to finish the step in flight and save before it kills them
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(stop_budget()) + 60))
    return env


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """A launcher may die of a signal before its workers have saved: wait for its whole process group."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)


def run_child(cmd: list[str], stage_dir: Path) -> None:
    """Run a stage's process; its known failures come back as the same exceptions as in-process."""
    from selfreward.records import read_json

    error = stage_dir / "error.json"
    if error.exists():
        error.unlink()
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=_child_env(), start_new_session=True)
    _children.append(proc.pid)
    try:
        if _stop_requested:  # a signal that arrived before the child existed
            os.killpg(proc.pid, _stop_requested[0])
        rc = proc.wait()
        _wait_group_gone(proc.pid, stop_budget() + 60)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        _children.remove(proc.pid)
    # a launcher (accelerate/torchrun) reports any failed rank as 1: the stage's own record says what it was
    record = read_json(error) if error.exists() else {"exit_code": rc, "message": f"exited with code {rc}"}
    kinds = {code: kind for kind, code in _CODES}
    if record["exit_code"] in kinds:
        raise kinds[record["exit_code"]](record["message"])
    if rc != 0 or not (stage_dir / "manifest.json").exists():
        raise RuntimeError(f"stage {stage_dir.name} {record['message']}: {' '.join(cmd)}")


def slurm_nodes() -> int:
    """Nodes of the SLURM allocation this process runs in (1 outside SLURM)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return 1
    return int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)


def _config_processes(cfg) -> int:
    import yaml

    launch = yaml.safe_load(Path(cfg.launch.accelerate_config).read_text()) or {}
    return cfg.launch.num_processes or int(launch.get("num_processes", 1))


def processes_per_node(cfg, nodes: int) -> int:
    """The allocation's GPUs per node; without GPUs, the recipe's process count spread over the nodes."""
    gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if gpus.isdigit() and int(gpus) > 0:
        return int(gpus)
    return max(1, _config_processes(cfg) // nodes)


def world_size(cfg) -> int:
    """Processes training runs on: with batch size and accumulation it fixes the effective batch."""
    if cfg.launch.mode != "subprocess" or not cfg.launch.accelerate_config:
        return 1
    nodes = slurm_nodes()
    return nodes * processes_per_node(cfg, nodes) if nodes > 1 else _config_processes(cfg)


_MODULES = {"sft": "selfreward.train.sft"}  # stages whose process is not `python -m selfreward.<name>`


def stage_command(cfg, name: str, iter_dir: Path) -> list[str]:
    """The child process of a stage: `python -m selfreward.<name>`, or for training with an accelerate config,
    `accelerate launch --config_file <config> -m selfreward.train` (through srun on several nodes)."""
    from selfreward.artifacts import iteration_of

    module = _MODULES.get(name, f"selfreward.{name}")
    stage_args = ["-m", module, str(iter_dir.parent), str(iteration_of(iter_dir))]
    if name not in ("train", "sft") or not cfg.launch.accelerate_config:
        return [sys.executable, *stage_args]
    if slurm_nodes() > 1:
        return srun_accelerate(cfg, slurm_nodes(), stage_args)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.launch.accelerate_config]
    if cfg.launch.num_processes:
        cmd += ["--num_processes", str(cfg.launch.num_processes)]
    return cmd + stage_args


def main_node_address() -> str:
    """The first node of the allocation (`scontrol show hostnames`), as the address slurmd knows it by."""
    names = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    node = subprocess.run(["scontrol", "-o", "show", "node", names[0]], capture_output=True, text=True).stdout
    addr = next((f.split("=", 1)[1] for f in node.split() if f.startswith("NodeAddr=")), "")
    return addr or names[0]


def srun_accelerate(cfg, nodes: int, stage_args: list[str]) -> list[str]:
    """One `accelerate launch` per node through srun. The machine rank is `$SLURM_NODEID` inside single
    quotes, so each node's task reads its own (an unescaped one would make every node rank 0)."""
    import yaml

    per_node = processes_per_node(cfg, nodes)
    port = os.environ.get("SELFREWARD_MAIN_PORT") or str(29500 + int(os.environ["SLURM_JOB_ID"]) % 20000)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.launch.accelerate_config,
              "--num_machines", str(nodes), "--num_processes", str(nodes * per_node),
              "--main_process_ip", main_node_address(), "--main_process_port", port]
    kind = (yaml.safe_load(Path(cfg.launch.accelerate_config).read_text()) or {}).get("distributed_type")
    if kind == "DEEPSPEED":  # torchrun on every node, not DeepSpeed's pdsh launcher
        launch += ["--deepspeed_multinode_launcher", "standard"]
    inner = " ".join(map(shlex.quote, launch)) + ' --machine_rank "$SLURM_NODEID" ' + " ".join(
        map(shlex.quote, stage_args))
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "bash", "-c", "exec " + inner]
