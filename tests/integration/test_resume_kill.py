"""Resume proven per stage: `kill -9` in data_gen, judge, train and eval, then the same command again, gives the
artifacts of an uninterrupted run; the test counts the finished work that was reused.

Each stage runs as its own process (`python -m selfreward.jobs stage`, what slurm/stage.sbatch runs) in a copy of
an uninterrupted reference run that holds only the stages upstream of it. Three windows of each stage:
- before its first shard (or checkpoint): killed as soon as the stage has started (its started.json exists);
- between two shards: killed once N of them exist, N and a further delay drawn from a fixed seed (0, or
  $SELFREWARD_KILL_SEED to explore others; the seed is printed), so a failure reproduces;
- after its last shard, before its manifest: the state such a kill leaves (every shard or checkpoint on disk,
  no outputs, no manifest) is built from the reference run, as no signal can land in that window reliably.
Reuse is counted, not assumed: every shard (or checkpoint step) that existed at the kill is still there, unchanged
(same bytes and mtime), and the rerun's log computes exactly the shards (or steps) that were missing.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfreward.records import SHARD_HEADER, read_json

STAGES = ("data_gen", "judge", "train", "eval")
OUTPUTS = {"data_gen": ["data_gen/prompts.jsonl", "data_gen/responses.jsonl"],
           "judge": ["judge/judgments.jsonl", "judge/pairs.jsonl"],
           "train": ["train/adapter/adapter_model.safetensors", "train/adapter/adapter_config.json"],
           "eval": ["eval/probes.jsonl", "eval/decision.json", "outcome.json"]}
SEED = int(os.environ.get("SELFREWARD_KILL_SEED") or 0)


def _jobs(recipe, *args):
    return [sys.executable, "-m", "selfreward.jobs", "stage", str(recipe), *map(str, args)]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_loop_recipe):
    """One iteration of the whole loop on the tiny random Llama with transformers; several shards per stage."""
    return tiny_loop_recipe(tmp_path_factory.mktemp("resume"), "resume",
                            data_gen={"num_prompts": 4, "prompts_per_round": 2}, judge={"known_answer_pairs": 2},
                            eval={"shard_size": 1})


@pytest.fixture(scope="module")
def reference(recipe):
    """The uninterrupted run, stage by stage as the kills will run them."""
    out_dir = recipe.parent / "reference"
    for stage, k in (("baseline", 0), *((s, 1) for s in STAGES)):
        out = subprocess.run(_jobs(recipe, stage, k, f"run.output_dir={out_dir}"), capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, (stage, out.stderr[-3000:])
    return out_dir / "resume"


def _shards(stage_dir: Path) -> dict[str, tuple[int, bytes]]:
    """The stage's finished shards: JSONL files that start with a shard header, by path, with mtime and bytes."""
    found = {}
    for p in sorted(stage_dir.rglob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            first = f.readline()
        if first.startswith("{") and SHARD_HEADER in json.loads(first):
            found[str(p.relative_to(stage_dir))] = (p.stat().st_mtime_ns, p.read_bytes())
    return found


def _checkpoints(stage_dir: Path) -> dict[int, tuple[int, bytes]]:
    """Complete training checkpoints (trainer_state.json is written last), by step."""
    return {int(p.parent.name.split("-")[1]): (p.stat().st_mtime_ns, p.read_bytes())
            for p in (stage_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")}


def _upstream_copy(reference: Path, dest: Path, stage: str) -> Path:
    """A run directory as it was before `stage` started: run.yaml, the baseline and the stages before it."""
    run_dir = dest / "resume"
    (run_dir / "iter_001").mkdir(parents=True)
    shutil.copy(reference / "run.yaml", run_dir / "run.yaml")
    shutil.copytree(reference / "iter_000", run_dir / "iter_000")
    shutil.copy(reference / "iter_001" / "lineage.json", run_dir / "iter_001" / "lineage.json")
    for up in STAGES[:STAGES.index(stage)]:
        shutil.copytree(reference / "iter_001" / up, run_dir / "iter_001" / up)
    return run_dir


def _units(stage: str, stage_dir: Path):
    """What the stage has finished so far, and its count (train: the newest checkpoint's step)."""
    if stage == "train":  # save_total_limit keeps one checkpoint: count by its step
        return _checkpoints(stage_dir), lambda kept: max(kept, default=0)
    return _shards(stage_dir), len


def _total(stage: str, ref_dir: Path) -> int:
    return read_json(ref_dir / "manifest.json")["metrics"]["steps"] if stage == "train" else len(_shards(ref_dir))


def _rerun_reuses(stage, cmd, run_dir, reference, kept, done, total, where):
    """Run the stage again: it computes exactly the missing work, keeps what was there, ends as the reference."""
    stage_dir, ref_dir = run_dir / "iter_001" / stage, reference / "iter_001" / stage
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (where, out.stderr[-3000:])
    log = out.stdout + out.stderr
    if stage == "train":
        computed = len(re.findall(r"\{'loss': ", log))  # the trainer logs every optimizer step it runs
        if done:
            assert f"resuming from checkpoint-{done}" in log, (where, log[-2000:])
        else:
            assert "resuming from" not in log, where
        assert computed == total - done, (where, computed)
        print(f"{where}: rerun resumed at step {done}, computed {computed} of {total} steps")
    else:
        computed = re.findall(r"^shard (\S+): \d+ rows computed", log, re.M)
        after = _shards(stage_dir)
        reused = {rel for rel in after if rel in kept}
        assert len(after) == total and len(computed) == total - len(kept), (where, computed)
        assert len(reused) == len(kept) == done  # every shard on disk at the kill was reused...
        assert all(after[rel] == kept[rel] for rel in kept), where  # ...untouched (bytes and mtime)
        assert not set(computed) & {'/'.join((stage_dir / rel).parts[-4:]) for rel in kept}, (where, computed)
        print(f"{where}: rerun reused {len(reused)} shards and computed {len(computed)}")
    for rel in OUTPUTS[stage]:
        assert (run_dir / "iter_001" / rel).read_bytes() == (reference / "iter_001" / rel).read_bytes(), (where, rel)
    mine, theirs = read_json(stage_dir / "manifest.json"), read_json(ref_dir / "manifest.json")
    assert mine["config_hash"] == theirs["config_hash"] and mine["outputs"] == theirs["outputs"], where


@pytest.mark.parametrize("window", ["before the first shard", "between shards"])
@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_then_rerun_reuses_finished_work(stage, window, recipe, reference, tmp_path):
    rng = random.Random(f"{SEED}-{stage}")
    print(f"kill seed {SEED} (SELFREWARD_KILL_SEED={SEED} reproduces it)")
    run_dir = _upstream_copy(reference, tmp_path, stage)
    stage_dir = run_dir / "iter_001" / stage
    total = _total(stage, reference / "iter_001" / stage)

    def count():  # one scan of the stage directory a poll (it reads every shard)
        kept, n = _units(stage, stage_dir)
        return n(kept)

    assert total >= 3, f"{stage}: the recipe gives too few shards ({total}) to kill in between"
    # between: after the wait_for-th unit and before the next; a stage on a tiny model finishes a shard in tens
    # of milliseconds on a fast machine, so the jitter after the wait_for-th appears stays below that
    wait_for, delay = (0, 0.0) if window == "before the first shard" else (rng.randint(1, total - 1),
                                                                             rng.uniform(0.0, 0.02))
    ready = (lambda: (stage_dir / "started.json").exists()) if wait_for == 0 else (lambda: count() >= wait_for)
    cmd = _jobs(recipe, stage, 1, f"run.output_dir={tmp_path}")

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    where = f"seed {SEED}: killed {stage} {delay:.2f}s after {wait_for} of {total} " + (
        "steps were checkpointed" if stage == "train" else "shards existed")
    assert running, f"{where}, but the stage had already ended"
    assert not (stage_dir / "manifest.json").exists(), where
    kept, n = _units(stage, stage_dir)
    done = n(kept)
    if wait_for == 0:
        assert (stage_dir / "started.json").exists() and done == 0, where  # the stage began, nothing finished
    else:
        assert done >= wait_for, where
    _rerun_reuses(stage, cmd, run_dir, reference, kept, done, total, where)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_after_the_last_shard_before_the_manifest(stage, recipe, reference, tmp_path):
    """What a kill between the last shard and the manifest leaves: every shard (train: the last step's
    checkpoint) and the started record, no outputs, no manifest. The rerun computes nothing and writes the
    reference's outputs."""
    run_dir = _upstream_copy(reference, tmp_path, stage)
    stage_dir, ref_dir = run_dir / "iter_001" / stage, reference / "iter_001" / stage
    shutil.copytree(ref_dir, stage_dir, copy_function=shutil.copy2)
    for entry in read_json(ref_dir / "manifest.json")["outputs"].values():  # the outputs, then the manifest, go
        out = stage_dir / entry["path"]
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    (stage_dir / "manifest.json").unlink()
    total = _total(stage, ref_dir)
    kept, n = _units(stage, stage_dir)
    assert n(kept) == total and (stage_dir / "started.json").exists()
    assert not any((run_dir / "iter_001" / rel).exists() for rel in OUTPUTS[stage])
    cmd = _jobs(recipe, stage, 1, f"run.output_dir={tmp_path}")
    _rerun_reuses(stage, cmd, run_dir, reference, kept, total, total, f"{stage}: after the last of {total} units")
