"""slurm/submit.sh and slurm/stage.sbatch on a real cluster: the per-stage chain, and training on two nodes.

The two nodes are two slurmd on this machine (tests/slurm/cluster.py): srun places one task on each, and each
task must read its own `$SLURM_NODEID` for the two `accelerate launch` processes to meet (gloo).
"""
import os
import re
import subprocess
from datetime import datetime

from conftest import SLURM_DIR, assert_same_artifacts, wait_for
from selfreward import artifacts, config, loop
from selfreward.records import read_json, write_json, write_jsonl


def _when(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")


def test_submit_chains_stages_in_dependency_order(cluster, tiny_recipe, reference_run, job_env):
    out = subprocess.run([str(SLURM_DIR / "submit.sh"), str(tiny_recipe), "run.name=chain"], capture_output=True,
                         text=True, cwd=tiny_recipe.parent, env={**cluster.env(), **job_env}, timeout=120)
    assert out.returncode == 0, out.stderr
    stages = [(m[1], m[0]) for m in re.findall(r"^iteration (\d+) (\w+): job \d+$", out.stdout, re.M)]
    assert stages == [("baseline", "0"), ("data_gen", "1"), ("judge", "1"), ("train", "1"), ("eval", "1")]
    ids = [int(i) for i in re.findall(r": job (\d+)$", out.stdout, re.M)]
    pending = cluster.job(ids[-1])
    assert pending["Dependency"].startswith(f"afterok:{ids[-2]}"), pending
    infos = [cluster.wait_job(i, 600) for i in ids]
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 5, infos
    for before, after in zip(infos, infos[1:]):  # each job started only after the one it depends on ended
        assert _when(after["StartTime"]) >= _when(before["EndTime"]), (before, after)
    run_dir = tiny_recipe.parent / "runs" / "chain"
    assert_same_artifacts(run_dir, reference_run)
    stage_logs = sorted(p.name for p in (run_dir / "logs").glob("iter*-*-r0.log"))
    assert len(stage_logs) == 5, stage_logs


def test_bad_submissions_are_one_line_errors(cluster, tiny_recipe, job_env):
    env = {**cluster.env(), **job_env}
    cases = [(["--train-nodes", "0", str(tiny_recipe)], "--train-nodes: 0 nodes"),
             (["--gpus-per-node", "8", str(tiny_recipe), "model.tensor_parallel_size=3"], "does not divide the 8 GPUs"),
             ([str(tiny_recipe.parent / "missing.yaml")], "recipe not found"),
             (["--train-nodes", "2", str(tiny_recipe)], "needs launch.mode: subprocess")]
    for args, expected in cases:
        out = subprocess.run([str(SLURM_DIR / "submit.sh"), *args, "run.name=bad"], capture_output=True, text=True,
                             cwd=tiny_recipe.parent, env=env, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, out.stderr)
    assert not (tiny_recipe.parent / "runs" / "bad").exists()  # nothing left behind
    out = subprocess.run(["bash", str(SLURM_DIR / "loop.sbatch")], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and out.stderr.strip() == ("selfreward-slurm: error: missing RECIPE (a recipe file "
                                                           "or a shipped recipe's name); see --help")


def _two_node_train_run(tmp_path, tiny_model_dir, make_pairs, write_recipe):
    data = {"run": {"name": "nodes", "output_dir": str(tmp_path / "runs")}, "model": {"ref": str(tiny_model_dir)},
            "train": {"per_device_train_batch_size": 2, "learning_rate": 5e-3, "lora_r": 8, "max_length": 128,
                      "save_steps": 4},
            "launch": {"mode": "subprocess", "accelerate_config": "cpu-ddp"}}
    recipe = write_recipe(tmp_path / "nodes.yaml", data)
    cfg = config.load(recipe)
    run_dir = loop.prepare_run_dir(cfg, force=False)
    (run_dir / "run.lock").unlink()  # this test process is not the run: the job is
    iter_dir = artifacts.iteration_dir(run_dir, 1)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", make_pairs(64))  # 16 steps: 64 pairs / (2 per rank x 2 ranks)
    artifacts.write_manifest(iter_dir / "judge", "judge", {"judge": "test"}, {}, {}, 0.0)
    return recipe, run_dir


def test_training_on_two_nodes_meets_through_srun_and_stops_together(cluster, tmp_path, tiny_model_dir, make_pairs,
                                                                     write_recipe, job_env):
    """sbatch -N2: one accelerate launch per node (machine rank from each node's own $SLURM_NODEID); USR2 to
    the batch shell reaches every rank, all stop after the same step and save it, the job requeues and resumes
    from that step's checkpoint (not a periodic one: those come every 4 steps, and the signal lands after the
    first) for the steps left."""
    recipe, run_dir = _two_node_train_run(tmp_path, tiny_model_dir, make_pairs, write_recipe)
    env = {**job_env, "SELFREWARD_MAIN_PORT": str(29400 + os.getpid() % 500)}
    job = cluster.sbatch("--nodes=2", "--time=10", f"--output={tmp_path}/slurm-%j.out",
                         str(SLURM_DIR / "stage.sbatch"), str(recipe), "train", "1", cwd=tmp_path, env=env)
    train = run_dir / "iter_001" / "train"
    wait_for((train / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists, 300, "checkpoint-4", 0.05)
    cluster.run("scancel", "--batch", "--signal=USR2", str(job))
    cluster.release_requeued(job, 1, 120)
    info = cluster.wait_job(job, 600)
    logs = {p.name: p.read_text() for p in (run_dir / "logs").glob(f"iter1-train-{job}-r*.log")}
    before, after = logs.get(f"iter1-train-{job}-r0.log", ""), logs.get(f"iter1-train-{job}-r1.log", "")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, before[-3000:])
    assert 'srun --nodes=2 --ntasks=2 --ntasks-per-node=1' in before and '--machine_rank "$SLURM_NODEID"' in before
    stopped = re.findall(r"training stopped after step (\d+)", before)
    assert len(stopped) >= 2 and len(set(stopped)) == 1, stopped  # both ranks, after the same step
    step = int(stopped[0])
    assert 4 < step < 16, step  # after the periodic checkpoint-4, before the end
    assert f"train: resuming from checkpoint-{step} " in after, after[-3000:]  # the signal's checkpoint, by rank 0
    manifest = read_json(train / "manifest.json")
    m = manifest["metrics"]
    assert m["world_size"] == 2 and m["steps"] == 16 and m["resumed_from_step"] == step  # ran steps step+1..16
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), train / "adapter")
