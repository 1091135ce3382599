"""slurm/loop.sbatch on a real cluster: a whole run, and preemption during generation and during training.

The preempted jobs requeue themselves, resume, and must end with the artifacts of an uninterrupted in-process
run; the logs of both job runs count the shards computed, so a redone shard is counted, not assumed.
"""
import re
import subprocess
import time

from conftest import SLURM_DIR, assert_same_artifacts, shard_events, signal_to_exit, wait_for

from selfreward.records import read_json


def _submit(cluster, recipe, name, env, *sbatch_args, overrides=()):
    return cluster.sbatch(*sbatch_args, f"--output={recipe.parent}/slurm-%j.out", str(SLURM_DIR / "loop.sbatch"),
                          str(recipe), f"run.name={name}", *overrides, cwd=recipe.parent, env=env)


def _logs(run_dir, job):
    return {p.name: p.read_text() for p in sorted((run_dir / "logs").glob(f"*-{job}-r*.log"))}


def test_loop_sbatch_completes_with_the_in_process_artifacts(cluster, tiny_recipe, reference_run, job_env):
    job = _submit(cluster, tiny_recipe, "whole", job_env)
    info = cluster.wait_job(job, 600)
    run_dir = tiny_recipe.parent / "runs" / "whole"
    log = "".join(_logs(run_dir, job).values())
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", (info, log[-3000:])
    assert "git commit" in log and "run:\n  name: whole" in log  # the resolved config and commit come first
    assert_same_artifacts(run_dir, reference_run)
    assert not (run_dir / "run.lock").exists()  # released at exit


def test_preempted_during_generation_requeues_and_resumes(cluster, tiny_recipe, reference_run, job_env):
    """USR2 (the default preemption signal) with a 1 s stop budget, sent when data_gen's first shard (its first
    round of prompts) is written, with one response a shard (data_gen.shard_size is operational): the job stops
    in generation, which its log must show; a shard in flight that cannot end in time is abandoned and redone
    by the requeued job; nothing else is computed twice."""
    run_dir = tiny_recipe.parent / "runs" / "gen"
    job = _submit(cluster, tiny_recipe, "gen", {**job_env, "SELFREWARD_STOP_WITHIN": "1"},
                  overrides=["data_gen.shard_size=1"])
    shards = run_dir / "iter_001" / "data_gen" / "shards"
    wait_for(lambda: shards.is_dir() and any(shards.glob("round*.jsonl")), 300, f"{shards}/round*", period=0.05)
    cluster.run("scancel", "--batch", "--signal=USR2", str(job))
    cluster.release_requeued(job, 1, 120)
    info = cluster.wait_job(job, 600)
    logs = _logs(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, list(logs))
    before, after = logs[f"selfreward-{job}-r0.log"], logs[f"selfreward-{job}-r1.log"]
    assert "exit code 75" in before and "requeueing job" in before
    # the stage interrupted was generation: the stop names a data_gen shard (one not begun, or the one abandoned)
    stop = re.search(r"selfreward: preempted: (stopped before (\S+) on|(\S+) abandoned on)", before)
    assert stop and re.fullmatch(r"(round\d+|responses)-\d+\.jsonl", stop[2] or stop[3]), before[-3000:]
    assert "[iter 1] data_gen:" not in before  # data_gen did not finish in the first job
    events = shard_events(before) + shard_events(after)
    # at most the shard in flight is redone: abandoned when it cannot end within the budget (a loaded machine),
    # finished when it can (a tiny model on an idle one); either way no finished shard is computed twice
    abandoned = [s for s, kind in events if kind == "abandoned"]
    assert len(abandoned) <= 1 and all(a.startswith("iter_001/data_gen/shards/") for a in abandoned), events
    computed = [s for s, kind in events if kind == "computed"]
    assert len(computed) == len(set(computed)), "a finished shard was computed again"
    if abandoned:
        assert abandoned[0] in shard_events(after)[0]  # the first shard the requeued job computes is the abandoned one
    seconds = signal_to_exit(before)
    print(f"\nSIGUSR2 during generation: exit {seconds:.2f}s after the signal (stop budget 1 s)")
    assert seconds < 10
    assert_same_artifacts(run_dir, reference_run)


def test_sigterm_during_training_stops_after_the_step_and_resumes(cluster, tiny_recipe, reference_run, job_env):
    """SIGTERM to every process of the job (as preemption without a user signal does) as training starts, with no
    periodic checkpoint (train.save_steps far beyond the run's steps, an operational key): the optimizer step in
    flight is finished and the signal's own checkpoint saved, the job requeues, and training resumes from that
    checkpoint and runs only the steps left."""
    run_dir = tiny_recipe.parent / "runs" / "train"
    job = _submit(cluster, tiny_recipe, "train", job_env, overrides=["train.save_steps=1000"])
    train = run_dir / "iter_001" / "train"
    wait_for((train / "started.json").exists, 400, f"{train / 'started.json'}", period=0.05)
    assert not (train / "checkpoints").exists()  # the stage has only begun: the model is still loading
    cluster.run("scancel", "--full", "--signal=TERM", str(job))
    cluster.release_requeued(job, 1, 120)
    info = cluster.wait_job(job, 600)
    logs = _logs(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, list(logs))
    before, after = logs[f"selfreward-{job}-r0.log"], logs[f"selfreward-{job}-r1.log"]
    # the signal arrived before step 1 ended: that step is finished and checkpointed, then the job stops
    assert "training stopped after step 1 " in before and "exit code 75" in before
    # with save_steps 1000 no periodic checkpoint exists at step 1: the one resumed from is the signal's
    assert "train: resuming from checkpoint-1 " in after
    m, ref = read_json(train / "manifest.json")["metrics"], read_json(reference_run / "iter_001/train/manifest.json")["metrics"]
    assert m["steps"] == ref["steps"] >= 2 and m["resumed_from_step"] == 1  # the requeued job ran steps 2..N only
    assert ref["resumed_from_step"] == 0
    assert "already done, skipped" in after  # data_gen and judge were not redone
    assert not [s for s, _ in shard_events(after) if "/data_gen/" in s or "/judge/" in s]
    seconds = signal_to_exit(before)
    print(f"\nSIGTERM during training: exit {seconds:.2f}s after the signal (model load, one step, checkpoint)")
    assert seconds < 25
    assert_same_artifacts(run_dir, reference_run)


def test_a_run_directory_held_by_a_live_job_is_refused(cluster, tiny_recipe, reference_run, job_env):
    """A second job on a run directory that a running job holds: one line naming the holder, exit code 2."""
    run_dir = tiny_recipe.parent / "runs" / "held"
    first = _submit(cluster, tiny_recipe, "held", job_env)
    lock = run_dir / "run.lock"
    wait_for(lock.exists, 120, f"{lock}", period=0.05)
    out = subprocess.run([job_env["SELFREWARD_PYTHON"], "-m", "selfreward.cli", "run", str(tiny_recipe),
                          "run.name=held"], capture_output=True, text=True, cwd=tiny_recipe.parent,
                         env={**cluster.env(), **job_env}, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by pid" in lines[0] and f"SLURM job {first}" in lines[0], out.stderr
    cluster.run("scancel", str(first))
    time.sleep(0.5)
