"""A real single-machine SLURM cluster for the tests: munged, slurmctld and two slurmd, every path in one directory.

Contract: `Cluster(root).start()` writes a slurm.conf and a munge key under `root`, starts munged, slurmctld and
one slurmd per node (two nodes, `n1` and `n2`, on this machine, so `srun` can place one task per node and each
reads its own `$SLURM_NODEID`), and waits until the nodes are idle; `env()` is what a client (sbatch, srun,
scontrol) needs; `stop()` ends every daemon it started, by pid. `missing()` names the binaries that are not
installed (the tests skip, or fail under SELFREWARD_REQUIRE_SLURM=1).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sacct", "sinfo", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
NODES = ("n1", "n2")


def which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 2
        self.conf = self.root / "etc" / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        r = self.root
        for d in ("etc", "state", "log", "run", *(f"spool/{n}" for n in NODES)):
            (r / d).mkdir(parents=True, exist_ok=True)
        ctld, host = _free_port(), socket.gethostname()
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
                          f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
ClusterName=selfreward-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=1
MessageTimeout=20
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PlugStackConfig={r}/etc/plugstack.conf
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        (r / "etc" / "plugstack.conf").write_text("")

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60) -> "Cluster":
        self._write_conf()
        munge = self.root / "munge"
        munge.mkdir(mode=0o755, exist_ok=True)
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self._spawn([which("munged"), "-F", "-f", f"--socket={self.socket}", f"--key-file={key}",
                     f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
                     f"--seed-file={munge}/munged.seed"], "munged")
        self._wait(lambda: self.socket.exists(), timeout, "munged did not create its socket")
        self._spawn([which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(self._ctld_up, timeout, "slurmctld did not answer")
        for n in NODES:
            self._spawn([which("slurmd"), "-D", "-N", n, "-f", str(self.conf)], f"slurmd-{n}")
        self._wait(self._nodes_idle, timeout, "slurmd nodes did not become idle")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(p.poll() is not None for p in self.procs):
                break
            if ready():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{what}; logs in {self.root / 'log'}: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-n:]}"
                         for p in sorted((self.root / "log").glob("*")) if p.is_file())

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env(), timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def _ctld_up(self) -> bool:
        return self.run("scontrol", "ping", check=False).stdout.count("UP") > 0

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n, "").startswith("idle") for n in NODES)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # jobs

    def sbatch(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> int:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd,
                             env={**self.env(), **(env or {})}, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {out.stderr.strip()}")
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """scontrol's view of a job as key -> value (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id), check=False).stdout
        fields = {}
        for item in out.split():
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        return fields

    def release_requeued(self, job_id: int, restarts: int, timeout: float) -> None:
        """SLURM holds a requeued job for about two minutes before it may start again; make it eligible now
        (the scheduler's delay is not what the tests are about)."""
        end = time.time() + timeout
        while time.time() < end:
            info = self.job(job_id)
            if info.get("JobState") == "PENDING" and int(info.get("Restarts", 0)) >= restarts:
                # slurmd rejects a credential issued in the second its job's old one was revoked: wait for the
                # nodes to be free and that second to pass
                self._wait(self._nodes_idle, timeout, "nodes did not become idle after the requeue")
                time.sleep(2)
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                return
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} was not requeued within {timeout}s: {self.job(job_id)}")

    def wait_job(self, job_id: int, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                              "NODE_FAIL", "OUT_OF_MEMORY")) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout}s")
