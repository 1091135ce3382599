"""bench/dpo.py refuses a pairs file that does not exist or holds fewer pairs than asked: one line, exit 2,
before any model loads."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dpo.py"


def _run(*args):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)


def test_missing_pairs_file(tmp_path):
    out = _run("--pairs", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"bench/dpo.py: error: pairs file not found: {tmp_path / 'nope.jsonl'}"]


def test_too_few_pairs(tmp_path, make_pairs):
    import json

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(3)))
    out = _run("--pairs", str(path), "--n", "64")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"bench/dpo.py: error: {path} holds 3 pairs, fewer than --n 64"]
