"""bench/dpo.py refuses a pairs file that does not exist or holds fewer pairs than asked, bench/dpo_gpu.py an
unknown model shape, a directory without a tokenizer or a malformed variant, bench/generation.py and bench/dpo.py an
unknown side or dtype choice, bench/quick.py an unknown part or a missing pairs file: one line, exit 2, before any
model loads."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dpo.py"
GPU_BENCH = BENCH.with_name("dpo_gpu.py")
GEN_BENCH = BENCH.with_name("generation.py")
QUICK = BENCH.with_name("quick.py")


def _run(*args, bench=BENCH):
    return subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=120)


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


def test_gpu_bench_bad_arguments(tmp_path, smol_dir):
    cases = [
        (["--tokenizer", str(smol_dir), "--models", "qwen2.5-7b"],
         "unknown model 'qwen2.5-7b' (known: qwen2.5-0.5b, qwen2.5-1.5b, tiny)"),
        (["--tokenizer", str(tmp_path)],
         f"--tokenizer {tmp_path}: not a tokenizer directory (no tokenizer_config.json)"),
        (["--tokenizer", str(smol_dir), "--variant", "nogc"],
         "--variant 'nogc': expected NAME;key.path=value[;key.path=value...]"),
    ]
    for args, message in cases:
        out = _run(*args, bench=GPU_BENCH)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip().splitlines() == [f"bench/dpo_gpu.py: error: {message}"]


def test_unknown_side_and_part(tmp_path, make_pairs):
    import json

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(4)))
    cases = [
        (GEN_BENCH, ["--sides", "engine,vlm"], "bench/generation.py: error: unknown side 'vlm' (known: engine, "
                                               "engine-stock-ops, engine-lora, vllm, transformers)"),
        (BENCH, ["--pairs", str(pairs), "--n", "4", "--sides", "selfreward,trll"],
         "bench/dpo.py: error: unknown side 'trll' (known: selfreward, trl)"),
        (GEN_BENCH, ["--vllm-dtype", "bf16"], "bench/generation.py: error: --vllm-dtype 'bf16': expected checkpoint "
                                              "or engine"),
        (BENCH, ["--pairs", str(pairs), "--n", "4", "--trl-precision", "fp16"],
         "bench/dpo.py: error: --trl-precision 'fp16': expected trl or stage"),
        (QUICK, ["--only", "generation,dpo2"], "bench/quick.py: error: unknown part 'dpo2' (known: generation, dpo, judge)"),
        (QUICK, ["--pairs", str(tmp_path / "none.jsonl")],
         f"bench/quick.py: error: pairs file not found: {tmp_path / 'none.jsonl'} (run `make demo` first, pass --pairs, "
         "or leave dpo out of --only)"),
    ]
    for bench, args, message in cases:
        out = _run(*args, bench=bench)
        assert out.returncode == 2 and out.stdout == "", (bench, out.stdout)
        assert out.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "quick").exists()
