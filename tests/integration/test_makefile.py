"""The Makefile as a user drives it, offline: `make install-gpu` installs the `gpu` extra and what no extra can
express on a machine without a GPU (dry run), and `make demo` keeps the hub offline unless the recipe's model
still has to be downloaded. A stand-in venv records what the demo's commands see."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import selfreward

SOURCE = Path(selfreward.__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not (SOURCE / "Makefile").is_file() or shutil.which("make") is None,
                                reason="needs a source checkout and make")


def _make(*args, env=None):
    return subprocess.run(["make", "--no-print-directory", "-C", str(SOURCE), *args], capture_output=True, text=True,
                          env=env or os.environ, timeout=120)


def test_install_gpu_installs_the_gpu_extra_and_the_extras_without_a_gpu(tmp_path):
    out = _make("-n", "install-gpu", f"VENV={tmp_path / 'venv'}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("pip install" in line and "-e '.[gpu,dev]'" in line for line in lines), out.stdout
    assert not any("[cpu," in line for line in lines)
    assert f"{tmp_path / 'venv'}/bin/python -m selfreward.extras install -q" in lines
    assert f"{tmp_path / 'venv'}/bin/python -m selfreward.extras check" in lines
    assert f"touch {tmp_path / 'venv'}/.installed-gpu" in lines


@pytest.fixture
def stand_in_venv(tmp_path):
    """bin/python is this interpreter (selfreward importable); bin/selfreward records its arguments and
    HF_HUB_OFFLINE; the install stamp is fresh, so `make demo` installs nothing."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "selfreward").write_text(f'#!/bin/sh\necho "$1 HF_HUB_OFFLINE=$HF_HUB_OFFLINE" >> {log}\n')
    for exe in ("python", "selfreward"):
        (venv / "bin" / exe).chmod(0o755)
    (venv / ".installed-cpu").touch()
    return venv, log


def _cache_model(hub, repo):
    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "chat_template.jinja"):
        (snapshot / name).write_text("{}")


def test_demo_keeps_the_hub_offline_unless_the_model_must_be_downloaded(tmp_path, stand_in_venv, recipe_data,
                                                                     write_recipe):
    venv, log = stand_in_venv
    hub = tmp_path / "hub"
    _cache_model(hub, "acme/downloaded")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_CACHE"] = str(hub)
    cases = [("embedded:smollm2-135m-instruct", {}, "1"), ("acme/not-downloaded", {}, "0"),
             ("acme/downloaded", {}, "1"), ("acme/not-downloaded", {"HF_HUB_OFFLINE": "1"}, "1")]
    for n, (ref, caller, offline) in enumerate(cases):
        recipe_data["model"] = {"ref": ref}
        recipe = write_recipe(tmp_path / f"r{n}.yaml", recipe_data)
        log.unlink(missing_ok=True)
        out = _make("demo", f"VENV={venv}", "EXTRA=cpu", f"RECIPE={recipe}", env={**env, **caller})
        assert out.returncode == 0, out.stderr
        assert log.read_text().splitlines() == [f"{c} HF_HUB_OFFLINE={offline}" for c in ("run", "status", "report")], \
            (ref, caller)
