"""A non-editable install: the wheel holds only `selfreward` (stages and recipes inside it), installs into a fresh
virtual environment, and validates a shipped recipe from an unrelated directory."""
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import selfreward
from selfreward.config import RECIPES_DIR

SOURCE = Path(selfreward.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not (SOURCE / "pyproject.toml").is_file():
        pytest.skip("selfreward is not installed from a source checkout")
    src = tmp_path_factory.mktemp("src")  # build outside the checkout: setuptools writes build/ and egg-info
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, src / name)
    for name in ("selfreward", "data_gen", "judge", "train", "eval", "recipes"):
        shutil.copytree(SOURCE / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    # no build isolation: the project venv's setuptools builds it, nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    wheel, = out.glob("selfreward-*.whl")
    return wheel


def test_wheel_holds_only_the_selfreward_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"selfreward", wheel.name.split("-py")[0] + ".dist-info"}
    for rel in ("selfreward/train/__main__.py", "selfreward/judge/stage.py", "selfreward/recipes/smollm2-135m-cpu.yaml",
                "selfreward/recipes/constitutions/default.md", "selfreward/recipes/accelerate/zero3.yaml",
                "selfreward/recipes/seeds/instructions.jsonl", "selfreward/recipes/probes/default.jsonl"):
        assert rel in names, rel


def test_installed_wheel_validates_a_shipped_recipe_from_anywhere(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    installed = {p.name for p in site.iterdir()} - {"__pycache__"}
    assert {n for n in installed if not n.endswith((".dist-info", ".pth"))} == {"selfreward"}
    # the heavy dependencies come from the project venv, added as a plain path (its .pth files, among them the
    # editable install's finder, are not processed)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import selfreward.train.stage as s, selfreward.config as c; "
                                           "print(s.__file__); print(c.RECIPES_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where
    assert Path(where[1]) != RECIPES_DIR
    out = subprocess.run([str(venv / "bin" / "selfreward"), "validate", "smollm2-135m-cpu"], capture_output=True,
                         text=True, cwd=elsewhere, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m-cpu" in out.stdout and ": ok (" in out.stdout
