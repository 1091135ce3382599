"""Shipped recipes through the CLI, run from an unrelated directory: list, copy, run by name, bad input."""
import hashlib

import pytest
import yaml

from selfreward import config


def test_list_shows_every_shipped_recipe_with_a_description(cli, recipes_dir):
    out = cli("recipes")
    assert out.returncode == 0, out.stderr
    shipped = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
    assert shipped and [line.split()[0] for line in out.stdout.splitlines()] == shipped
    assert all(len(line.split(None, 1)) == 2 for line in out.stdout.splitlines())  # a description each


def test_each_shipped_recipe_starts_with_the_command_that_runs_it(recipes_dir):
    for path in recipes_dir.glob("*.yaml"):
        assert path.read_text().splitlines()[0] == f"# selfreward run {path.stem}", path


def test_cp_copies_the_recipe_and_its_files_and_refuses_to_overwrite(cli, tmp_path):
    dest = tmp_path / "mine"
    out = cli("recipes", "cp", "smollm2-135m-cpu", dest)
    assert out.returncode == 0, out.stderr
    copied = dest / "smollm2-135m-cpu.yaml"
    data = yaml.safe_load(copied.read_text())
    for rel in (data["data_gen"]["seeds"], data["judge"]["constitution"], data["eval"]["probes"],
                data["eval"]["capability_probes"], data["eval"]["pairwise_template"]):
        assert (dest / rel).is_file(), rel
    cfg = config.load(copied)  # the copy is self-contained: its paths resolve next to it
    assert cfg.judge.constitution == str((dest / data["judge"]["constitution"]).resolve())

    copied.write_text(copied.read_text() + "# my edit\n")
    before = hashlib.sha256(copied.read_bytes()).hexdigest()
    out = cli("recipes", "cp", "smollm2-135m-cpu", dest)
    assert out.returncode == 2 and "already exists (pass --force" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == before
    assert cli("recipes", "cp", "smollm2-135m-cpu", dest, "--force").returncode == 0
    assert "# my edit" not in copied.read_text()


def test_unknown_recipe_name_lists_the_shipped_ones(cli):
    for args in (("recipes", "cp", "nope", "x"), ("validate", "nope"), ("run", "nope")):
        out = cli(*args)
        assert out.returncode == 2
        line, = out.stderr.strip().splitlines()
        assert "nope: recipe not found" in line and "smollm2-135m-cpu" in line


def test_validate_a_shipped_recipe_by_name_from_any_directory(cli, tmp_path):
    out = cli("validate", "smollm2-135m-cpu")
    assert out.returncode == 0, out.stderr
    assert f"run dir runs/smollm2-135m-cpu" in out.stdout
    assert not (tmp_path / "runs").exists()  # validating writes nothing


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=2", "train.batch_size: renamed to train.per_device_train_batch_size"),
    ("train.grad_accum=2", "train.grad_accum: renamed to train.gradient_accumulation_steps"),
    ("train.epochs=2", "train.epochs: renamed to train.num_train_epochs"),
    ("data_gen.max_tokens=100000", "data_gen.max_tokens: 100000 tokens do not fit in model.max_model_len=2048"),
    ("judge.max_tokens=4096", "judge.max_tokens: 4096 tokens do not fit in model.max_model_len=2048"),
    ("run.output_dir=/proc/version/runs", "run.output_dir: cannot create /proc/version/runs/smollm2-135m-cpu"),
])
def test_mistakes_validate_used_to_accept(cli, tmp_path, override, expected):
    for command in ("validate", "run"):
        out = cli(command, "smollm2-135m-cpu", override)
        assert out.returncode == 2, out.stdout + out.stderr
        line, = out.stderr.strip().splitlines()
        assert expected in line and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_output_dir_under_a_file_is_refused(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    out = cli("validate", "smollm2-135m-cpu", f"run.output_dir={tmp_path / 'afile' / 'runs'}")
    assert out.returncode == 2 and "run.output_dir: cannot create" in out.stderr
    assert (tmp_path / "afile").read_text() == "x"


def _shipped(recipes_dir):
    return sorted(p.stem for p in recipes_dir.glob("*.yaml"))


def test_validate_passes_on_every_shipped_recipe_offline_without_fetching(cli, recipes_dir, tmp_path):
    """CI validates every shipped recipe with HF_HUB_OFFLINE=1: a hub id is checked for its form only, the output
    says it was not fetched, and nothing is downloaded or written."""
    import os

    hf_home = tmp_path / "hf-home"
    env_before = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(hf_home)  # the cli fixture's child inherits it: an empty cache
    try:
        hub_recipes = 0
        for name in _shipped(recipes_dir):
            out = cli("validate", name)
            assert out.returncode == 0, (name, out.stderr)
            assert f"{name}: ok (" in out.stdout
            ref = yaml.safe_load((recipes_dir / f"{name}.yaml").read_text())["model"]["ref"]
            if not ref.startswith("embedded:"):
                hub_recipes += 1
                assert (f"{name}: model.ref: hub id {ref}: form checked (org/name), not fetched (HF_HUB_OFFLINE=1)"
                        in out.stdout), out.stdout
        assert hub_recipes >= 2  # the GPU recipes name hub ids
    finally:
        os.environ.pop("HF_HOME") if env_before is None else os.environ.update(HF_HOME=env_before)
    assert not (tmp_path / "runs").exists() and not hf_home.exists()


def test_run_of_a_hub_recipe_offline_is_refused_before_writing(cli, tmp_path):
    out = cli("run", "qwen2.5-1.5b-gpu", f"run.output_dir={tmp_path / 'runs'}")
    line, = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "HF_HUB_OFFLINE=1 forbids downloading it" in line
    assert not (tmp_path / "runs").exists()


def test_gpu_recipes_ship_their_launch_shapes(recipes_dir):
    one = config.load("qwen2.5-1.5b-gpu", offline_hub_ok=True)
    assert one.model.ref == "Qwen/Qwen2.5-1.5B-Instruct" and one.model.engine == "vllm"
    assert (one.launch.mode, one.launch.gpus_per_node, one.launch.train_nodes) == ("subprocess", 1, 1)
    assert yaml.safe_load(open(one.launch.accelerate_config))["num_processes"] == 1
    big = config.load("qwen2.5-7b-zero3-2x8", offline_hub_ok=True)
    assert (big.launch.gpus_per_node, big.launch.train_nodes, big.model.tensor_parallel_size) == (8, 2, 4)
    ds = yaml.safe_load(open(big.launch.accelerate_config))
    assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == 3
    assert ds["deepspeed_config"]["zero3_init_flag"] is True


def test_submit_dry_run_asks_each_stage_for_the_recipes_shape(tmp_path):
    """slurm/submit.sh takes the shapes from the recipe: train jobs on 2 nodes x 8 GPUs, vLLM stages on the
    tensor-parallel size's GPUs of one node; a dry run submits nothing and downloads nothing."""
    import os
    import re
    import subprocess
    import sys

    submit = config.RECIPES_DIR.parent / "slurm" / "submit.sh"
    env = {**os.environ, "SELFREWARD_PYTHON": sys.executable}
    # options as the docs write them and as sbatch users type them: "--partition gpu" and "--account=proj"
    out = subprocess.run(["bash", str(submit), "--dry-run", "--partition", "gpu", "--account=proj",
                          "qwen2.5-7b-zero3-2x8", "run.iterations=1"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    sbatch = [line for line in out.stdout.splitlines() if line.startswith("sbatch ")]
    assert len(sbatch) == 5 and all(" --partition=gpu " in s and " --account=proj " in s for s in sbatch)
    jobs = {m[2]: m[1] for m in re.finditer(r"^sbatch .*?(--nodes=.*?) --job-name=sr-[\w.-]+-\d-(\w+) ", out.stdout,
                                            re.M)}
    assert jobs == {"baseline": "--nodes=1 --gpus-per-node=4", "data_gen": "--nodes=1 --gpus-per-node=4",
                    "judge": "--nodes=1 --gpus-per-node=4", "train": "--nodes=2 --gpus-per-node=8",
                    "eval": "--nodes=1 --gpus-per-node=4"}, out.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, expected", [
    ("model.tensor_parallel_size=3", "model.tensor_parallel_size: 3 does not divide launch.gpus_per_node=8"),
    ("launch.train_nodes=0", "launch.train_nodes: Input should be greater than or equal to 1 (got 0)"),
    ("launch.mode=inprocess", "launch.train_nodes: 2 nodes need launch.mode: subprocess"),
    ("model.ref=Qwen2.5-7B-Instruct", "is neither an existing directory, a hub id (org/name) nor embedded:"),
])
def test_bad_launch_shapes_are_one_line(cli, tmp_path, override, expected):
    for command in ("validate", "run"):
        out = cli(command, "qwen2.5-7b-zero3-2x8", override, f"run.output_dir={tmp_path / 'runs'}")
        assert out.returncode == 2, out.stdout + out.stderr
        line, = out.stderr.strip().splitlines()
        assert expected in line and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_zero3_config_that_would_save_an_empty_adapter_is_refused(cli, tmp_path, recipes_dir):
    bad = tmp_path / "zero3-nogather.yaml"
    bad.write_text((recipes_dir / "accelerate" / "zero3.yaml").read_text().replace("zero3_save_16bit_model: true",
                                                                                    "zero3_save_16bit_model: false"))
    out = cli("validate", "qwen2.5-7b-zero3-2x8", f"launch.accelerate_config={bad}")
    line, = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "ZeRO-3 needs deepspeed_config.zero3_save_16bit_model: true" in line
