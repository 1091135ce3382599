"""The run directory lock, and --force on iteration k setting later iterations aside."""
import json
import subprocess
import sys

import pytest

from selfreward import artifacts, runlock, stale
from selfreward.records import read_json, write_json


def test_live_holder_is_refused_and_a_dead_one_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "run.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": runlock._me()["host"], "started": "t",
                                    "slurm_job_id": "4242", "slurm_restart": "0"}))
        with pytest.raises(runlock.RunLocked, match=rf"in use by pid {holder.pid} on .*SLURM job 4242"):
            runlock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    runlock.acquire(tmp_path)  # the holder is dead: its lock is stale
    assert json.loads(lock.read_text())["pid"] == runlock._me()["pid"]
    runlock.acquire(tmp_path)  # taking it again in the holding process is a no-op
    runlock.release(tmp_path)
    assert not lock.exists()


def test_an_earlier_run_of_the_same_requeued_job_is_stale(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    me = runlock._me()
    assert not runlock.holder_alive({**me, "pid": 1, "host": "elsewhere", "slurm_restart": "0"})


def test_force_on_iteration_k_sets_later_iterations_aside_and_moves_the_pointer_back(tmp_path):
    for k in (1, 2, 3):
        write_json(artifacts.iteration_dir(tmp_path, k) / "outcome.json", {"iteration": k, "promoted": k != 2})
    artifacts.write_state(tmp_path, {"promoted_iteration": 3, "model": "m", "adapter": artifacts.adapter_path(3),
                                     "history": [{"iteration": k, "promoted": k != 2, "reasons": []}
                                                 for k in (1, 2, 3)]})
    moved = stale.invalidate_after(tmp_path, 2)
    assert sorted(p.name.split(".")[0] for p in moved) == ["iter_003"]
    assert not artifacts.iteration_dir(tmp_path, 3).exists() and artifacts.iteration_dir(tmp_path, 1).exists()
    assert not (artifacts.iteration_dir(tmp_path, 2) / "outcome.json").exists()
    state = read_json(tmp_path / "state.json")
    assert state["promoted_iteration"] == 1 and state["adapter"] == artifacts.adapter_path(1)
    assert [h["iteration"] for h in state["history"]] == [1]
