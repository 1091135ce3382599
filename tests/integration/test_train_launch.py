"""Training through `accelerate launch -m selfreward.train` across 2 CPU processes (gloo): data parallel, and
DeepSpeed ZeRO-2 / ZeRO-3 for real, each compared with a single-process run on the same data and seed."""
import pytest
import torch
from safetensors.torch import load_file

from selfreward import artifacts, config, lifecycle, loop
from selfreward.records import read_json, write_json, write_jsonl

ANSWERS = [("Yes. Water makes things wet.", "Bananas are purple on Tuesdays."),
           ("Paris is the capital of France.", "The capital of France is a type of cheese."),
           ("Two plus two is four.", "Two plus two is seven, mostly."),
           ("Ice melts when it is warmed.", "Ice is made of hot sand.")]


def _pairs(n):
    return [{"prompt": [{"role": "user", "content": f"Question {i}: tell me something true."}],
             "chosen": [{"role": "assistant", "content": ANSWERS[i % 4][0]}],
             "rejected": [{"role": "assistant", "content": ANSWERS[i % 4][1]}],
             "provenance": {"prompt_id": f"p{i}"}} for i in range(n)]


def _train(tmp_path, tiny_model_dir, write_recipe, name, train, launch, pairs):
    data = {"run": {"name": name, "output_dir": str(tmp_path / "runs"), "seed": 3}, "model": {"ref": str(tiny_model_dir)},
            "train": {"learning_rate": 2e-3, "lora_r": 8, "lora_dropout": 0.0, "max_length": 128, "precision": "fp32",
                      **train},
            "launch": launch}
    cfg = config.load(write_recipe(tmp_path / f"{name}.yaml", data))
    run_dir = loop.prepare_run_dir(cfg, force=False)
    iter_dir = artifacts.iteration_dir(run_dir, 1)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", pairs)
    artifacts.write_manifest(iter_dir / "judge", "judge", {"judge": "test"}, {}, {}, 0.0)
    from selfreward.train import stage

    manifest = lifecycle.execute(stage.STAGE, cfg, iter_dir)
    assert manifest == read_json(iter_dir / "train" / "manifest.json")
    return cfg, iter_dir, manifest


def test_accelerate_launch_two_processes(tiny_model_dir, tmp_path, write_recipe, make_pairs):
    cfg, iter_dir, manifest = _train(
        tmp_path, tiny_model_dir, write_recipe, "ddp",
        {"per_device_train_batch_size": 2, "num_train_epochs": 1, "learning_rate": 5e-3},
        {"mode": "subprocess", "accelerate_config": "cpu-ddp", "num_processes": 2}, make_pairs(8))
    m = manifest["metrics"]
    assert m["world_size"] == 2 and m["zero_stage"] == 0  # plain DDP: no DeepSpeed
    assert m["steps"] == 2  # 8 pairs / (2 per process x 2 processes)
    assert m["loss_first"] == pytest.approx(0.6931, abs=1e-3)
    assert (iter_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (iter_dir / "train" / "adapter" / "ref").exists()
    from selfreward.train import stage

    # a second call finds the manifest and launches nothing
    assert lifecycle.execute(stage.STAGE, cfg, iter_dir) == manifest


# Same global batch (8 pairs: 8 in one process, 4 per process in two) so every step of every run sees all
# 8 pairs whatever the sampler's order, and the same number of steps (3 epochs of one step each).
STEPS = 3
PAIRS = 8
# fp32 throughout. Two processes compute each half batch's loss mean separately (with their own padding
# length) and average the gradients with an all-reduce, so sums run in another order than one process's:
# gradients agree to ~1e-7 relative. Adam divides by sqrt(v) + 1e-8, which magnifies that noise in elements
# whose gradient is near zero, so after 3 steps at lr 2e-3 (each step moves an element by up to 2e-3) we allow
# 2e-4 absolute: a tenth of one step's move, and far below the adapter's change from its initialisation.
ATOL = 2e-4


@pytest.fixture(scope="module")
def single_process(tiny_model_dir, tmp_path_factory, write_recipe):
    tmp = tmp_path_factory.mktemp("single")
    _, iter_dir, manifest = _train(tmp, tiny_model_dir, write_recipe, "single",
                                   {"per_device_train_batch_size": PAIRS, "num_train_epochs": STEPS}, {},
                                   _pairs(PAIRS))
    m = manifest["metrics"]
    assert m["world_size"] == 1 and m["steps"] == STEPS and m["zero_stage"] == 0
    return load_file(iter_dir / "train" / "adapter" / "adapter_model.safetensors"), m


@pytest.mark.parametrize("zero", ["cpu-zero2", "cpu-zero3"])
def test_deepspeed_zero_on_two_cpu_processes_matches_one_process(zero, single_process, tiny_model_dir, tmp_path,
                                                                 write_recipe):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    _, iter_dir, manifest = _train(
        tmp_path, tiny_model_dir, write_recipe, zero,
        {"per_device_train_batch_size": PAIRS // 2, "num_train_epochs": STEPS},
        {"mode": "subprocess", "accelerate_config": zero, "num_processes": 2}, _pairs(PAIRS))
    # the launcher exited 0, so both ranks finished; rank 0 wrote the manifest
    m = manifest["metrics"]
    single_adapter, single = single_process
    assert m["world_size"] == 2 and m["steps"] == STEPS and m["pairs"] == PAIRS
    assert m["zero_stage"] == int(zero[-1])  # DeepSpeed ran, under the stage the config names
    assert m["loss_first"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0
    # the first step's gradient (the same batch, the same weights) is the one-process gradient: the ranks' halves
    # are averaged. Summed, the norm would double, and Adam's steps (scale-free) would not show it
    assert m["grad_norm_first"] > 0 and m["grad_norm_first"] == pytest.approx(single["grad_norm_first"], rel=1e-4)
    adapter = iter_dir / "train" / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    loaded = {k.replace(".default", ""): v for k, v in get_peft_model_state_dict(model).items()}
    reference = {k.replace(".default", ""): v for k, v in single_adapter.items()}
    assert set(loaded) == set(reference) and len(loaded) == 2 * 7 * 2  # A and B of 7 modules in 2 layers
    lora_b = [k for k in reference if "lora_B" in k]
    # PEFT initialises B to zero: every B moved, by far more than the tolerance, in both runs
    assert min(reference[k].abs().max().item() for k in lora_b) > 20 * ATOL
    assert min(loaded[k].abs().max().item() for k in lora_b) > 20 * ATOL
    worst = max((loaded[k].float() - reference[k].float()).abs().max().item() for k in reference)
    print(f"{zero}: largest difference from the single-process adapter {worst:.2e} (tolerance {ATOL})")
    assert worst < ATOL, f"{zero}: adapter differs from the single-process one by {worst:.2e} (> {ATOL})"
    for k in reference:
        assert loaded[k].shape == reference[k].shape and loaded[k].dtype == torch.float32, k


def _rank_pids(run_dir):
    """rank -> pid of the training workers of this run (torchrun sets RANK in each worker's environment)."""
    import os

    ranks = {}
    for proc in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{proc}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{proc}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"selfreward.train" in cmdline and str(run_dir).encode() in cmdline:
            rank = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(proc)
    return ranks


def test_a_signal_to_one_rank_stops_both_after_the_same_step_then_resume_finishes(tiny_model_dir, tmp_path,
                                                                                  write_recipe, make_pairs):
    """SIGUSR2 to rank 1 alone: the stop flag is reduced over the ranks after every optimizer step, so rank 0
    stops after the same step, one checkpoint holds both ranks' state, and the rerun resumes from it."""
    import json
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    data = {"run": {"name": "onerank", "output_dir": str(tmp_path / "runs")}, "model": {"ref": str(tiny_model_dir)},
            "train": {"per_device_train_batch_size": 2, "learning_rate": 5e-3, "lora_r": 8, "max_length": 128,
                      "save_steps": 1, "lora_dropout": 0.0},
            "launch": {"mode": "subprocess", "accelerate_config": "cpu-ddp", "num_processes": 2}}
    recipe = write_recipe(tmp_path / "onerank.yaml", data)
    cfg = config.load(recipe)
    run_dir = loop.prepare_run_dir(cfg, force=False)
    (run_dir / "run.lock").unlink()  # the job below is the run, not this test process
    iter_dir = artifacts.iteration_dir(run_dir, 1)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", make_pairs(16))  # 4 steps of 2 pairs x 2 ranks
    artifacts.write_manifest(iter_dir / "judge", "judge", {"judge": "test"}, {}, {}, 0.0)
    train = iter_dir / "train"
    cmd = [sys.executable, "-m", "selfreward.jobs", "stage", str(recipe), "train", "1"]
    env = {**os.environ, "SELFREWARD_STOP_WITHIN": "60"}

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 300
    while not (train / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    ranks = _rank_pids(run_dir)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGUSR2)  # rank 1 only
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, log[-3000:]  # preempted: the sbatch script requeues
    assert log.count("SIGUSR2 received") == 1, log[-3000:]  # rank 0 never saw the signal itself
    stopped = re.findall(r"^train: training stopped after step (\d+) on signal 12", log, re.M)  # one per rank
    assert len(stopped) == 2 and len(set(stopped)) == 1, (stopped, log[-3000:])  # both ranks, the same step
    step = int(stopped[0])
    assert 1 <= step < 4
    checkpoint = train / "checkpoints" / f"checkpoint-{step}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not (train / "manifest.json").exists()

    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from checkpoint-{step}" in out.stdout + out.stderr
    m = read_json(train / "manifest.json")["metrics"]
    assert m["steps"] == 4 and m["world_size"] == 2
