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


def test_run_force_redoes_through_the_loop_and_leaves_nothing_stale(tmp_path, tiny_loop_recipe, cli):
    """`selfreward run --force` with a changed judge key, after two finished iterations: iteration 1's data_gen
    is kept (its config did not change), its judge, train and eval are redone, iteration 2 is set aside and run
    again from the moved-back pointer; every live manifest and metrics line belongs to the new config."""
    from selfreward import config, lifecycle, loop
    from selfreward.records import read_jsonl

    recipe = tiny_loop_recipe(  # smaller still, default shard sizes, no periodic checkpoints
        tmp_path, "force", probes=2, ifeval=1, run={"iterations": 2},
        data_gen={"num_prompts": 2, "prompts_per_round": 2, "prompt_max_tokens": 10, "shard_size": None},
        judge={"shard_size": None}, train={"max_length": 48, "lora_r": 4, "save_steps": None},
        eval={"shard_size": None})
    out = cli("run", recipe, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "force"
    kept = (run_dir / "iter_001" / "data_gen" / "manifest.json").stat().st_mtime_ns
    old = {s: read_json(run_dir / "iter_001" / s / "manifest.json")["config_hash"] for s in ("judge", "train", "eval")}
    # the loop skips everything now...
    assert "nothing to do" in cli("run", recipe).stdout
    # ...and --force with a changed judge key redoes what depends on it
    out = cli("run", recipe, "judge.min_margin=0.0001", "--force", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[iter 1] redone with --force: later iterations set aside (iter_002.stale-" in out.stdout, out.stdout
    assert (run_dir / "iter_001" / "data_gen" / "manifest.json").stat().st_mtime_ns == kept
    for stage in ("judge", "train", "eval"):
        assert len(list((run_dir / "iter_001").glob(f"{stage}.replaced-*"))) == 1, stage
        assert read_json(run_dir / "iter_001" / stage / "manifest.json")["config_hash"] != old[stage], stage
    assert len(list(run_dir.glob("iter_002.stale-*"))) == 1 and len(list(run_dir.glob("run.replaced-*.yaml"))) == 1
    cfg = config.load(recipe, ["judge.min_margin=0.0001"])
    stages = {s.name: s for s in loop.stages()}
    for k in (1, 2):  # every live stage was made by the new config, on the new upstream
        iter_dir = artifacts.iteration_dir(run_dir, k)
        for name, stage in stages.items():
            manifest = read_json(iter_dir / name / "manifest.json")
            assert manifest["config_hash"] == artifacts.config_hash(lifecycle.identity(stage, cfg, iter_dir)), (k, name)
        assert read_json(iter_dir / "outcome.json")["iteration"] == k
    state = read_json(run_dir / "state.json")
    assert [h["iteration"] for h in state["history"]] == [1, 2]
    promoted = [h["iteration"] for h in state["history"] if h["promoted"]]
    assert state["promoted_iteration"] == max(promoted, default=0)
    lines = read_jsonl(run_dir / "metrics.jsonl")
    seen = [(line["iteration"], line["stage"]) for line in lines]
    assert len(seen) == len(set(seen)), seen  # one line per (iteration, stage): the redone ones replaced
    for line in lines:  # and each names the live manifest, not the one set aside
        live = read_json(artifacts.iteration_dir(run_dir, line["iteration"]) / line["stage"] / "manifest.json")
        assert line["config_hash"] == live["config_hash"], (line["iteration"], line["stage"])
