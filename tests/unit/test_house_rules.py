"""The rules that keep the house readable, checked on the source: who may import which stage, no import circle,
empty packages."""
import ast
from pathlib import Path

import pytest

import selfreward
from selfreward.config import RECIPES_DIR

CORE = Path(selfreward.__file__).parent
STAGES = ("data_gen", "judge", "train", "eval")
# core modules that may import stage packages, and which: the loop runs them all; `selfreward eval` runs the eval
# stage's capability probes on a finished run (an entry point like the loop, beside it at the top of the core)
STAGE_USERS = {"loop.py": set(STAGES), "evaluate.py": {"eval"}}
ENTRY_POINTS = {"cli.py", "jobs.py"}  # the only core modules that may import a STAGE_USERS module


def _stage_dir(name):
    import importlib

    return Path(importlib.import_module(f"selfreward.{name}").__path__[0])


def _module_name(path: Path) -> str:
    """The dotted name a source file is imported under (stage folders install as selfreward.<stage>)."""
    package = "selfreward" if path.parent == CORE else f"selfreward.{path.parent.name}"
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an ImportFrom names, with a relative one (`from . import x`, `from .records import y`) resolved
    against the importing module's package."""
    if not node.level:
        return node.module
    package = module.split(".")
    base = package[:len(package) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every module a file imports, at module level or inside a function: `import a.b`, `from a import b` (as
    `a` and `a.b`), relative imports resolved, and `importlib.import_module("a.b")` with a constant name.
    `module` is the file's dotted name (by default where it sits in the package; an `__init__.py` is
    `<package>.__init__` here, so that `.` is its own package)."""
    module = module or _module_name(path) + (".__init__" if path.stem == "__init__" else "")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            name = _absolute(node, module)
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and _called(node.func) == "import_module":
            found.add(node.args[0].value)
    return found


def _called(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _stages_imported(path: Path) -> set[str]:
    return {s for s in STAGES for m in _imports(path) if m == f"selfreward.{s}" or m.startswith(f"selfreward.{s}.")}


def test_imports_see_relative_imports_and_import_module(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from . import records\nfrom .artifacts import read_state\nimport importlib\n"
                    "def f():\n    importlib.import_module('selfreward.launch')\n    from .. import loop\n")
    core = _imports(path, "selfreward.probe")
    assert {"selfreward.records", "selfreward.artifacts", "selfreward.artifacts.read_state",
            "selfreward.launch"} <= core, core
    stage = _imports(path, "selfreward.judge.probe")
    assert {"selfreward.judge.records", "selfreward.judge.artifacts.read_state", "selfreward.launch",
            "selfreward.loop"} <= stage, stage  # `..` from a stage module: the core package


def test_core_imports_no_stage_except_the_loop_and_the_eval_command():
    for path in CORE.glob("*.py"):
        used = _stages_imported(path)
        if path.name == "loop.py":
            assert set(STAGES) <= used
        else:
            assert used <= STAGE_USERS.get(path.name, set()), f"{path.name} imports {used}"


def test_only_entry_points_import_the_modules_that_import_stages():
    tops = {f"selfreward.{Path(name).stem}" for name in STAGE_USERS}
    for path in CORE.glob("*.py"):
        used = {t for t in tops for m in _imports(path) if m == t or m.startswith(f"{t}.")}
        if path.name not in ENTRY_POINTS:
            assert not used, f"{path.name} imports {used}: only {', '.join(sorted(ENTRY_POINTS))} may"


def _core_graph() -> dict[str, set[str]]:
    """selfreward/*.py and the stage packages' modules -> the ones of them each imports (any import, anywhere in
    the file: a function-level import is a dependency too, and may not hide a circle)."""
    files = [*CORE.glob("*.py"), *(p for s in STAGES for p in _stage_dir(s).glob("*.py"))]
    names = {_module_name(p) for p in files}
    graph = {}
    for path in files:
        own = _module_name(path)
        graph[own] = set()
        for imported in _imports(path):
            parts = imported.split(".")
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in names),
                          None)  # `from selfreward.records import x` is an edge to selfreward.records
            if target and target != own and target != "selfreward":
                graph[own].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge a depth-first search meets, as the path that closes it."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_cycles_are_found_and_printed():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    cycles = _cycles(_core_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


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
    assert defined == ["exits.py"]
