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
                data["eval"]["pairwise_template"]):
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
