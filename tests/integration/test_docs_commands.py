"""The commands the docs show a user still work: every command line in a fenced shell block of README.md,
slurm/README.md and docs/*.md is run in a form that needs no GPU, cluster or network (`selfreward run` as
`validate` with the same recipe and overrides, `make` as `make -n`, `submit.sh` with `--dry-run`, other
subcommands and scripts with `--help`). A command of a kind this test does not know fails it: a new kind of
command in the docs must be given a checkable form here, so the docs cannot drift from the code unseen."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "slurm" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# install and environment steps, and cluster or hub commands this machine cannot run: documented, not run here
NOT_RUN = ("python3.11 -m venv", ".venv/bin/pip ", "pip ", "export ", ".venv/bin/hf download", "hf download",
           "wandb sync", "srun ", "sbatch ")


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", doc.read_text(), re.S):
            if lang not in ("bash", "sh", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment explains, it is not an argument
                if line and not line.startswith("#"):
                    found.append((doc.relative_to(REPO).as_posix(), line))
    return found


COMMANDS = _commands()


def _checkable(words: list[str], tmp: Path) -> list[str] | None:
    """The command as it is checked here, or None when it is not run (NOT_RUN)."""
    py = [sys.executable]
    if words[0] in (".venv/bin/selfreward", "selfreward"):
        sub, rest = words[1], words[2:]
        if sub == "run":
            return [*py, "-m", "selfreward.cli", "validate", *rest]
        if sub in ("validate", "recipes") and (sub == "validate" or not rest):
            return [*py, "-m", "selfreward.cli", sub, *rest]
        if sub == "recipes" and rest[:1] == ["cp"]:
            return [*py, "-m", "selfreward.cli", "recipes", "cp", rest[1], str(tmp / rest[2])]
        return [*py, "-m", "selfreward.cli", sub, "--help"]
    if words[0] in (".venv/bin/python", "python") and words[1:3] == ["-m", "selfreward.extras"]:
        return [*py, "-m", "selfreward.extras", *words[3:], *(["--dry-run"] if words[3:4] == ["install"] else [])]
    if words[0] in (".venv/bin/python", "python") and words[1].startswith("bench/"):
        return [*py, words[1], *words[2:], "--help"]  # a benchmark takes minutes: its parser reads the arguments
    if words[0] == "make":
        return ["make", "-n", *words[1:]]
    if words[0] == "slurm/submit.sh":
        return ["bash", "slurm/submit.sh", "--dry-run", *words[1:]]
    if words[:2] == ["bash", "slurm/loop.sbatch"]:
        return words
    if any(" ".join(words).startswith(p) for p in NOT_RUN):
        return None
    raise AssertionError(f"no checkable form for a documented command: {' '.join(words)}")


def test_the_docs_show_commands():
    docs = {doc for doc, _ in COMMANDS}
    assert {"README.md", "slurm/README.md"} <= docs
    assert any(c.startswith("make demo") for _, c in COMMANDS) and any("submit.sh" in c for _, c in COMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_runs(doc, command, tmp_path):
    cmd = _checkable(shlex.split(command), tmp_path)
    if cmd is None:
        return
    if cmd[-1].endswith("my-recipe.yaml") or "my-recipe/" in " ".join(cmd):
        # the README's own recipe copy, as its previous line made it
        subprocess.run([sys.executable, "-m", "selfreward.cli", "recipes", "cp", "smollm2-135m-cpu",
                        str(tmp_path / "my-recipe")], check=True, capture_output=True, cwd=tmp_path)
        cmd = [str(tmp_path / w) if w.startswith("my-recipe") else w for w in cmd]
    # slurm/README.md's first step: `export SELFREWARD_PYTHON=$PWD/.venv/bin/python` (the python selfreward is in)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELFREWARD_PYTHON": sys.executable}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, f"{doc}: `{command}` checked as `{' '.join(cmd)}`: {out.stderr[-2000:]}"
