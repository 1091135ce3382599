"""Resume proven per stage: `kill -9` at a random point of data_gen, judge, train and eval, then the same command
again, gives the artifacts of an uninterrupted run; the test counts the finished work that was reused.

Each stage runs as its own process (`python -m selfreward.jobs stage`, what slurm/stage.sbatch runs) in a copy of
an uninterrupted reference run that holds only the stages upstream of it. The random point is drawn from a seed
that is printed (and taken from $SELFREWARD_KILL_SEED when set), so a failure can be reproduced: the process is
killed once N of the stage's shards (or training checkpoints) exist, N random, after a further random delay.
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
SEED = int(os.environ.get("SELFREWARD_KILL_SEED") or time.time_ns() % 2**31)


def _jobs(recipe, *args):
    return [sys.executable, "-m", "selfreward.jobs", "stage", str(recipe), *map(str, args)]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model_dir, recipes_dir, write_recipe):
    """One iteration of the whole loop on the tiny random Llama with transformers; several shards per stage."""
    tmp = tmp_path_factory.mktemp("resume")
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()[:4]
    (tmp / "probes.jsonl").write_text("\n".join(probes) + "\n")
    ifeval = (recipes_dir / "probes" / "ifeval.jsonl").read_text().splitlines()[:2]
    (tmp / "ifeval.jsonl").write_text("\n".join(ifeval) + "\n")
    data = {
        "run": {"name": "resume", "output_dir": str(tmp / "runs"), "iterations": 1, "seed": 0},
        "model": {"ref": str(tiny_model_dir), "engine": "hf", "dtype": "float32"},
        "data_gen": {"num_prompts": 4, "prompts_per_round": 2, "n_responses": 2, "max_tokens": 8,
                     "prompt_max_tokens": 12, "shard_size": 2, "min_words": 1, "max_similarity": 1.0,
                     "banned_words": []},
        "judge": {"mode": "logprob", "min_score_mass": 1.0e-9, "shard_size": 2, "known_answer_pairs": 2,
                  "allow_truncated": True},
        "train": {"per_device_train_batch_size": 1, "max_length": 64, "lora_r": 8, "lora_dropout": 0.0,
                  "save_steps": 1, "learning_rate": 5.0e-3},
        "eval": {"probes": "probes.jsonl", "capability_probes": "ifeval.jsonl", "capability_max_tokens": 8,
                 "max_tokens": 8, "judge_max_tokens": 4, "shard_size": 1},
    }
    return write_recipe(tmp / "resume.yaml", data)


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


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_at_a_random_point_then_rerun_reuses_finished_work(stage, recipe, reference, tmp_path):
    rng = random.Random(f"{SEED}-{stage}")
    print(f"kill seed {SEED} (SELFREWARD_KILL_SEED={SEED} reproduces it)")
    run_dir = _upstream_copy(reference, tmp_path, stage)
    stage_dir = run_dir / "iter_001" / stage
    ref_dir = reference / "iter_001" / stage
    count = (lambda: len(_checkpoints(stage_dir))) if stage == "train" else (lambda: len(_shards(stage_dir)))
    total = len(_checkpoints(ref_dir)) if stage == "train" else len(_shards(ref_dir))
    if stage == "train":  # save_total_limit keeps one checkpoint: count by the reference's steps instead
        total = read_json(ref_dir / "manifest.json")["metrics"]["steps"]
        count = lambda: max(_checkpoints(stage_dir), default=0)  # noqa: E731
    assert total >= 3, f"{stage}: the recipe gives too few shards ({total}) to kill in between"
    # kill between the wait_for-th and the next unit of work: a stage on a tiny model finishes a shard in tens
    # of milliseconds on a fast machine, so the jitter after the wait_for-th appears stays below that
    wait_for, delay = rng.randint(1, total - 1), rng.uniform(0.0, 0.02)
    cmd = _jobs(recipe, stage, 1, f"run.output_dir={tmp_path}")

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while count() < wait_for and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    where = f"seed {SEED}: killed {stage} {delay:.2f}s after {wait_for} of {total} " + (
        "steps were checkpointed" if stage == "train" else "shards existed")
    assert running, f"{where}, but the stage had already ended"
    assert not (stage_dir / "manifest.json").exists(), where
    kept = _checkpoints(stage_dir) if stage == "train" else _shards(stage_dir)
    done = max(kept, default=0) if stage == "train" else len(kept)
    assert done >= wait_for, where

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (where, out.stderr[-3000:])
    log = out.stdout + out.stderr
    if stage == "train":
        computed = len(re.findall(r"\{'loss': ", log))  # the trainer logs every optimizer step it runs
        assert f"resuming from checkpoint-{done}" in log, (where, log[-2000:])
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
