"""The rules that keep the house readable, checked on the source: who may import which stage, empty packages."""
import ast
from pathlib import Path

import pytest

import selfreward
from selfreward.config import RECIPES_DIR

CORE = Path(selfreward.__file__).parent
STAGES = ("data_gen", "judge", "train", "eval")


def _stage_dir(name):
    import importlib

    return Path(importlib.import_module(f"selfreward.{name}").__path__[0])


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _stages_imported(path: Path) -> set[str]:
    return {s for s in STAGES for m in _imports(path) if m == f"selfreward.{s}" or m.startswith(f"selfreward.{s}.")}


def test_core_imports_no_stage_except_the_loop():
    for path in CORE.glob("*.py"):
        used = _stages_imported(path)
        if path.name == "loop.py":
            assert set(STAGES) <= used
        else:
            assert not used, f"{path.name} imports {used}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_packages_import_only_themselves_and_the_core(stage):
    for path in _stage_dir(stage).glob("*.py"):
        assert _stages_imported(path) <= {stage}, path


def test_artifacts_and_config_do_not_import_each_other():
    assert not any(m.startswith("selfreward.config") for m in _imports(CORE / "artifacts.py"))
    assert not any(m.startswith("selfreward.artifacts") for m in _imports(CORE / "config.py"))


def test_packages_are_empty_and_modules_state_their_contract():
    inits = [CORE / "__init__.py", RECIPES_DIR / "__init__.py"] + [_stage_dir(s) / "__init__.py" for s in STAGES]
    assert all(p.read_text() == "" for p in inits)
    for path in [*CORE.glob("*.py"), *(p for s in STAGES for p in _stage_dir(s).glob("*.py"))]:
        if path.name != "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"


def test_exit_codes_are_defined_once():
    defined = [p.name for p in [*CORE.glob("*.py"), *(q for s in STAGES for q in _stage_dir(s).glob("*.py"))]
               if "EXIT_PREEMPTED =" in p.read_text()]
    assert defined == ["launch.py"]
