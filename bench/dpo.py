"""DPO benchmark: the train stage against a plain TRL `DPOTrainer` on the same pairs, model, LoRA and batch size.

Sides, each repetition in a fresh process:
- `selfreward`: `selfreward.train.dpo.fit` on an iteration directory holding the pairs (what the loop runs:
  the recipe's DPOConfig, reference log-probabilities computed once before training in larger batches,
  batches of similar lengths, bf16 base weights where the CPU computes bf16 natively);
- `trl`: `trl.DPOTrainer(model, DPOConfig(...), peft_config=LoraConfig(...))` with the same model, LoRA
  config, learning rate, beta, batch size, epochs and seed, and TRL's defaults for everything else (bf16
  autocast on a CPU included); with `--trl-precision stage`, the stage's precision instead (`train.precision`: the
  same where the CPU computes bf16 natively; fp32 where it does not, where bf16 autocast runs at under 1 GFLOP/s).

Reported: training wall time (loading the model and data, tokenizing, any precomputation, every step; the
stage's adapter save included), tokens/s (prompt + chosen + rejected tokens of the pairs per epoch, unpadded),
step time, peak RSS, final loss and the mean loss. Usage:

    .venv/bin/python bench/dpo.py --pairs RUN/iter_001/judge/pairs.jsonl [--n 64] [--repeats 3]

Writes bench/results/dpo.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dpo.json"
sys.path.insert(0, str(ROOT / "bench"))
from generation import _machine, fail  # noqa: E402  (the benches describe the machine and fail alike)


def _pairs(path: str, n: int) -> list[dict]:
    from selfreward.records import read_jsonl

    files = [Path(p) for p in path.split(",")]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        _fail(f"pairs file not found: {', '.join(missing)}")
    rows = [r for p in files for r in read_jsonl(p)]
    if len(rows) < n:
        _fail(f"{path} holds {len(rows)} pairs, fewer than --n {n}")
    return rows[:n]


def _fail(message: str) -> None:
    fail("bench/dpo.py", message)


def _tokens(cfg, rows) -> int:
    from transformers import AutoTokenizer

    from selfreward import models

    tok = AutoTokenizer.from_pretrained(models.resolve(cfg.model.ref))
    total = 0
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True)
        if isinstance(prompt, dict):
            prompt = prompt["input_ids"]
        for side in ("chosen", "rejected"):
            total += len(prompt) + len(tok(r[side][0]["content"], add_special_tokens=False)["input_ids"])
    return total


def run_side(side: str, args) -> dict:
    import torch

    from selfreward import models
    from selfreward.config import find_recipe, load
    from selfreward.records import write_json, write_jsonl

    cfg = load(find_recipe(args.recipe), [f"run.seed={args.seed}"])
    rows = _pairs(args.pairs, args.n)
    work = Path(tempfile.mkdtemp(prefix=f"bench-dpo-{side}-"))
    iter_dir = work / "iter_001"
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", rows)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    t = cfg.train
    # both clocks start with the same libraries imported (the TRL side's imports were never timed)
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if side == "selfreward":
        from selfreward.train import cpu_logprob, dpo  # noqa: F401  (fit installs cpu_logprob)

        start = time.perf_counter()
        trainer, summary = dpo.fit(cfg, iter_dir)
        wall = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if "loss" in h]
        steps, precision = trainer.state.global_step, summary["precision"]
    else:
        from selfreward.precision import use_bf16

        start = time.perf_counter()
        path = models.resolve(cfg.model.ref)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        data = load_dataset("json", data_files=str(iter_dir / "judge" / "pairs.jsonl"), split="train")
        data = data.remove_columns([c for c in data.column_names if c not in ("prompt", "chosen", "rejected")])
        trainer = DPOTrainer(
            model=model, processing_class=tok, train_dataset=data,
            args=DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=t.per_device_train_batch_size,
                           gradient_accumulation_steps=t.gradient_accumulation_steps,
                           num_train_epochs=t.num_train_epochs, learning_rate=t.learning_rate, beta=t.beta,
                           seed=args.seed, report_to=[], save_strategy="no", logging_steps=1,
                           # TRL defaults to bf16, which transformers refuses without a GPU unless told use_cpu
                           # (what its error says to do); bf16 autocast then runs on the CPU
                           use_cpu=not torch.cuda.is_available(),
                           **({"bf16": use_bf16(t.precision)} if args.trl_precision == "stage" else {})),
            peft_config=LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                   target_modules=t.lora_target_modules, task_type="CAUSAL_LM"))
        trainer.train()
        wall = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if "loss" in h]
        steps, precision = trainer.state.global_step, "bf16" if trainer.args.bf16 else "fp32"
    shutil.rmtree(work, ignore_errors=True)
    losses = [h["loss"] for h in history]
    return {"side": side, "wall_s": wall, "steps": steps, "step_s": wall / max(steps, 1), "precision": precision,
            "final_loss": losses[-1] if losses else None, "mean_loss": statistics.mean(losses) if losses else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", required=True, help="pairs.jsonl of a run (several: comma-separated)")
    ap.add_argument("--n", type=int, default=64, help="pairs to train on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipe", default="smollm2-135m-cpu", help="whose train section (LoRA, batch, lr) to use")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sides", default="selfreward,trl")
    ap.add_argument("--trl-precision", default="trl",
                    help="the trl side's precision: trl (TRL's default, bf16) or stage (the stage's train.precision)")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS), help="where the JSON result goes")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = [s for s in args.sides.split(",") if s not in ("selfreward", "trl")]
    if unknown:
        _fail(f"unknown side {unknown[0]!r} (known: selfreward, trl)")
    if args.trl_precision not in ("trl", "stage"):
        _fail(f"--trl-precision {args.trl_precision!r}: expected trl or stage")
    if args.n < 1 or args.repeats < 1:
        _fail("--n and --repeats must be at least 1")
    rows = _pairs(args.pairs, args.n)  # a missing file or too few pairs: one line, before any model loads
    if args.side:
        print("RESULT " + json.dumps(run_side(args.side, args)), flush=True)
        return
    from selfreward.config import find_recipe, load

    cfg = load(find_recipe(args.recipe))
    tokens = _tokens(cfg, rows) * cfg.train.num_train_epochs
    runs: dict = {}
    for rep in range(args.repeats):
        for side in args.sides.split(","):
            cmd = [sys.executable, __file__, "--side", side, "--pairs", args.pairs, "--n", str(args.n),
                   "--recipe", args.recipe, "--seed", str(args.seed), "--trl-precision", args.trl_precision]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"side {side} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-3:]}")
            r = json.loads(line[7:])
            r["tokens_per_s"] = tokens / r["wall_s"]
            runs.setdefault(side, []).append(r)
            print(f"rep {rep} {side}: {r['wall_s']:.1f}s, {r['tokens_per_s']:.0f} tokens/s, {r['steps']} steps, "
                  f"final loss {r['final_loss']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    table = {side: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                    "runs_wall_s": [r["wall_s"] for r in rs],
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                    "step_s": statistics.median(r["step_s"] for r in rs), "steps": rs[0]["steps"],
                    "precision": rs[0]["precision"],
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                    "final_loss": [r["final_loss"] for r in rs], "mean_loss": [r["mean_loss"] for r in rs]}
             for side, rs in runs.items()}
    speedup = (table["trl"]["median_wall_s"] / table["selfreward"]["median_wall_s"]
               if {"trl", "selfreward"} <= set(table) else None)
    result = {"machine": _machine(), "args": vars(args), "tokens_per_epoch": tokens // cfg.train.num_train_epochs,
              "table": table, "speedup_vs_trl": speedup}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{args.n} pairs, {tokens} tokens, {_machine()}\n"
          "| side | precision | median wall (s) | runs (s) | tokens/s | step (s) | peak RSS (MiB) | final loss | mean loss |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for side, r in table.items():
        print(f"| {side} | {r['precision']} | {r['median_wall_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['runs_wall_s'])} "
              f"| {r['tokens_per_s']:.0f} | {r['step_s']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{', '.join(f'{x:.4f}' for x in r['final_loss'])} | {', '.join(f'{x:.4f}' for x in r['mean_loss'])} |")
    if speedup:
        print(f"\nselfreward train stage: {speedup:.2f}x TRL's default throughput")


if __name__ == "__main__":
    main()
