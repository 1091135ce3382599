"""The headline comparisons in a few minutes, one line per ratio, so that a regression shows at the next change.

Each part runs its full benchmark script on a small workload (both sides of every ratio on the same work, in one
invocation, each side in a fresh process, medians of --repeats). Its batches of 16
sequences give the engine's batching less room than the full benchmarks' 256, so these ratios are a regression
check, not the headline numbers:
- `generation` (bench/generation.py): the loop's engine against stock vLLM and transformers `generate` on the demo
  recipe's data_gen workload (its temperature and top_p, EOS, 192 new tokens) and a fixed greedy one;
- `dpo` (bench/dpo.py): the train stage against TRL's `DPOTrainer` with its defaults, on a run's pairs;
- `judge` (bench/judge.py): logprob judging (one pass) against sampled judging (k=3), on the same responses.

Every side runs in the same dtype: stock vLLM in the engine's (`--vllm-dtype engine`) and TRL in the stage's
precision (`--trl-precision stage`). Where the CPU computes bf16 natively that is what their defaults pick anyway;
where it does not (AVX2 only), their defaults run bf16 at under 1 GFLOP/s and one repetition of the TRL side alone
took over 12 minutes on 8 pairs, which is no quick check (the full benchmarks keep the defaults).

    .venv/bin/python bench/quick.py [--only generation,dpo,judge] [--pairs RUN/iter_001/judge/pairs.jsonl]
                                    [--repeats 3]

--pairs defaults to the demo's pairs (`make demo` writes them). Prints one line per ratio, "name: X.XXx" (above 1:
the project's side is faster), and writes bench/results/quick/*.json. The full tables, with larger workloads, are
in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from generation import _machine, fail  # noqa: E402  (the benches describe the machine and fail alike)

PARTS = ("generation", "dpo", "judge")
DEMO_PAIRS = ROOT / "runs" / "smollm2-135m-cpu" / "iter_001" / "judge" / "pairs.jsonl"
PROG = "bench/quick.py"


def _commands(args, out: Path) -> dict[str, list[str]]:
    py, bench, r = sys.executable, ROOT / "bench", str(args.repeats)
    return {
        "generation": [py, str(bench / "generation.py"), "--repeats", r, "--prompts", "8", "--samples", "2",
                       "--sides", "engine,vllm,transformers", "--hf-batches", "16", "--vllm-dtype", "engine",
                       "--out", str(out / "generation.json")],
        "dpo": [py, str(bench / "dpo.py"), "--pairs", str(args.pairs), "--n", "8", "--repeats", r,
                "--trl-precision", "stage", "--out", str(out / "dpo.json")],
        "judge": [py, str(bench / "judge.py"), "--prompts", "8", "--samples", "2", "--repeats", r, "--k", "3",
                  "--checks", "8", "--planted", "4", "--out", str(out / "judge.json")],
    }


def ratios(part: str, result: dict) -> dict[str, float]:
    """The part's headline ratios from its JSON result, each oriented so that above 1 means the project is faster."""
    if part == "generation":
        return {f"generation {k}": v for k, v in result["ratios"].items()}
    if part == "dpo":
        return {"dpo: selfreward train stage / TRL defaults at the stage's precision (throughput)":
                result["speedup_vs_trl"]}
    return {"judge: logprob / sampled k=3 (speed)": result["speed_ratio"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--pairs", default=str(DEMO_PAIRS), help="pairs.jsonl for the dpo part (default: the demo's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quick"))
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        fail(PROG, f"unknown part {unknown[0]!r} (known: {', '.join(PARTS)})" if unknown else "--only names no part")
    if args.repeats < 1:
        fail(PROG, "--repeats must be at least 1")
    if "dpo" in parts and not Path(args.pairs).is_file():
        fail(PROG, f"pairs file not found: {args.pairs} (run `make demo` first, pass --pairs, or leave dpo out of --only)")
    out = Path(args.out)
    cmds = _commands(args, out)
    print(f"bench/quick.py on {_machine()}, medians of {args.repeats}", flush=True)
    lines = {}
    for part in parts:
        t = time.perf_counter()
        proc = subprocess.run(cmds[part], capture_output=True, text=True)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            sys.exit(f"{PROG}: {part} failed (exit {proc.returncode}): {tail}")
        found = ratios(part, json.loads((out / f"{part}.json").read_text()))
        for name, value in found.items():
            print(f"{name}: {value:.2f}x" if value is not None else f"{name}: n/a", flush=True)
        lines.update(found)
        print(f"  ({part}: {time.perf_counter() - t:.0f} s)", flush=True)
    (out / "ratios.json").write_text(json.dumps({"machine": _machine(), "repeats": args.repeats, "ratios": lines},
                                                indent=2))


if __name__ == "__main__":
    main()
