"""Processes: how a command-line entry ends, and how a stage's child process is started and waited for.

Contract:
- `exit_code_of` runs a command-line entry (`selfreward ...`, `python -m selfreward.jobs ...`) and maps its
  failures to the exit codes of `exits`: a user mistake (a bad recipe, a conflicting stage, a locked run
  directory, a library version a patch of its internals was not written for) is one line `selfreward: error: ...` and 2, a
  preemption one line and 75; any other failure is a traceback.
- A stage child runs in its own process group; a stop signal is forwarded to the whole group
  (`stopping.forwarding_to`), and the parent waits for the group to be gone before it reads the child's record.
  Torchrun (under `accelerate launch`) forwards SIGUSR1/SIGUSR2 to its workers too (`PET_SIGNALS_TO_HANDLE`).
- A stage child reports its known failures through `<stage_dir>/error.json` (`lifecycle.stage_main`), which
  `run_child` turns back into the same exceptions an in-process run raises, so the loop handles both modes alike.
- `stage_command` is the child's command: `python -m selfreward.<stage>`, or for training with an accelerate
  config `accelerate launch`. Inside a SLURM allocation of several nodes, training starts through `srun`: one
  `accelerate launch` per node, the main node's address from `scontrol show hostnames`, the machine rank from
  each task's own `$SLURM_NODEID`, and the process count from the allocation (`srun_accelerate`).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfreward.exits import EXIT_PREEMPTED, EXIT_USER_ERROR, StageConflict, exception_for
from selfreward.patches import PatchVersionError
from selfreward.stopping import Preempted, forwarding_to, stop_budget


def exit_code_of(command, args, resume_hint: str) -> int:
    """Run a command-line entry (`selfreward ...`, `python -m selfreward.jobs ...`) and map its failures to
    exit codes: a user mistake (bad recipe, stage conflict, bad model reference, a locked run directory) is
    one line `selfreward: error: ...` and 2; a preemption is one line ending with `resume_hint` and 75."""
    from selfreward.config import RecipeError
    from selfreward.models import ModelRefError
    from selfreward.records import DamagedFile

    try:
        return command(args)
    except (RecipeError, StageConflict, ModelRefError, DamagedFile, PatchVersionError) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as e:
        print(f"selfreward: preempted: {e}; {resume_hint}", file=sys.stderr)
        return EXIT_PREEMPTED


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
    with forwarding_to(proc.pid):
        try:
            rc = proc.wait()
            _wait_group_gone(proc.pid, stop_budget() + 60)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # a launcher (accelerate/torchrun) reports any failed rank as 1: the stage's own record says what it was
    record = read_json(error) if error.exists() else {"exit_code": rc, "message": f"exited with code {rc}"}
    known = exception_for(record["exit_code"], record["message"], record.get("type"))
    if known is not None:
        raise known
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
