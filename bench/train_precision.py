"""DPO + LoRA training throughput on the CPU: fp32 vs bf16 autocast, same pairs, same steps.

Usage: .venv/bin/python bench/train_precision.py [--pairs runs/smollm2-135m-cpu/iter_001/judge/pairs.jsonl]
       [--n 16] [--repeats 3]
The default pairs file is what `make demo` writes. Each side runs in a fresh process; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(precision: str, pairs: Path, n: int) -> dict:
    from selfreward.config import Config
    from selfreward.records import write_json
    from selfreward.train.dpo import fit

    cfg = Config()
    cfg.train.precision = precision
    cfg.train.num_train_epochs = 1
    work = Path(tempfile.mkdtemp()) / "iter_001"
    (work / "judge").mkdir(parents=True)
    write_json(work / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    (work / "judge" / "pairs.jsonl").write_text("".join(pairs.read_text().splitlines(keepends=True)[:n]))
    _, metrics = fit(cfg, work)
    shutil.rmtree(work.parent)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=str(ROOT / "runs/smollm2-135m-cpu/iter_001/judge/pairs.jsonl"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_precision.json"))
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.pairs), args.n)))
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for side in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--worker", side, "--pairs", args.pairs, "--n",
                                  str(args.n)], capture_output=True, text=True, check=True)
            runs.setdefault(side, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.n} pairs of {args.pairs}, batch 4, 1 epoch, SmolLM2-135M + LoRA r=16; median of {args.repeats}")
    print("| precision | median train time (s) | runs (s) | samples/s | final loss |")
    print("|---|---|---|---|---|")
    med = {}
    for side, rs in runs.items():
        med[side] = statistics.median(r["train_runtime_s"] for r in rs)
        print(f"| {side} | {med[side]:.1f} | {[r['train_runtime_s'] for r in rs]} | "
              f"{args.n / med[side]:.3f} | {rs[0]['loss_last']:.4f} |")
    print(f"bf16 autocast: {med['fp32'] / med['bf16']:.2f}x faster than fp32")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, "median_s": med, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
