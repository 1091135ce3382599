"""Fixtures for the tests on a real SLURM cluster started here (tests/slurm/cluster.py).

Without slurm-wlm and munge the tests are skipped with a message saying how to enable them;
SELFREWARD_REQUIRE_SLURM=1 (set by .ci/run) turns that skip into a failure.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster import Cluster, missing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
ENABLE = ("install Debian's slurm-wlm and munge as root (apt-get install -y slurm-wlm munge; .ci/run does) to run "
          "them; SELFREWARD_REQUIRE_SLURM=1 makes their absence a failure")
# compared byte for byte with an uninterrupted in-process run
ARTIFACTS = ["iter_000/eval/probes.jsonl", "iter_001/lineage.json", "iter_001/data_gen/prompts.jsonl",
             "iter_001/data_gen/responses.jsonl", "iter_001/judge/judgments.jsonl", "iter_001/judge/pairs.jsonl",
             "iter_001/train/adapter/adapter_model.safetensors", "iter_001/train/adapter/adapter_config.json",
             "iter_001/eval/probes.jsonl", "iter_001/eval/decision.json", "iter_001/outcome.json"]


def _unavailable() -> str | None:
    gone = missing()
    if gone:
        return f"SLURM cluster tests skipped: {', '.join(gone)} not installed; {ENABLE}"
    if os.geteuid() != 0:
        return f"SLURM cluster tests skipped: slurmd must run as root here; {ENABLE}"
    return None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    why = _unavailable()
    if why and os.environ.get("SELFREWARD_REQUIRE_SLURM") == "1":
        pytest.fail(why.replace("skipped", "required (SELFREWARD_REQUIRE_SLURM=1) but cannot run"))
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def job_env():
    """What a job needs: the venv's python, no network, quiet libraries."""
    return {"SELFREWARD_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory, tiny_loop_recipe):
    """One iteration of the whole loop on the tiny random Llama with transformers: about a minute here."""
    return tiny_loop_recipe(tmp_path_factory.mktemp("recipe"), "tiny", model={"max_model_len": 512})


@pytest.fixture(scope="session")
def reference_run(tiny_recipe, job_env):
    """The uninterrupted in-process run every cluster run is compared with."""
    out = subprocess.run([sys.executable, "-m", "selfreward.cli", "run", str(tiny_recipe), "run.name=reference"],
                         capture_output=True, text=True, cwd=tiny_recipe.parent, timeout=600,
                         env={**os.environ, **job_env})
    assert out.returncode == 0, out.stderr[-3000:]
    return tiny_recipe.parent / "runs" / "reference"


def assert_same_artifacts(run_dir: Path, reference: Path, names=ARTIFACTS) -> None:
    for rel in names:
        assert (run_dir / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} differs from the reference"


def wait_for(predicate, timeout: float, what: str, period: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise TimeoutError(f"{what} not seen within {timeout}s")


def shard_events(text: str) -> list[tuple[str, str]]:
    """(shard, 'computed' | 'abandoned') for every shard a run worked on, from its log."""
    return [(m[1], "abandoned" if m[2].startswith("abandoned") else "computed")
            for m in re.finditer(r"^shard (\S+): (abandoned|\d+ rows computed)", text, re.M)]


def signal_to_exit(text: str) -> float:
    """Seconds from the first forwarded signal to the child's exit, from the batch script's log lines."""
    sent = float(re.search(r"SIG\w+ received at ([\d.]+)", text)[1])
    done = float(re.search(r"exit code \d+ at ([\d.]+)", text[text.index("received at"):])[1])
    return done - sent
