"""vLLM CPU LoRA throughput: base model vs LoRA with vLLM's stock torch kernels vs selfreward's grouped kernels.

Same work on every side: judge-style requests (constitution + seed instruction + a response), greedy, fixed
max_tokens. Each side runs in a fresh process (the kernels are process-wide); repeated --repeats times; the table
reports medians. Usage: .venv/bin/python bench/lora_cpu.py [--requests 48] [--max-tokens 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(side: str, requests: int, max_tokens: int, adapter: str) -> dict:
    os.environ["SELFREWARD_STOCK_CPU_LORA"] = "1" if side == "lora-stock" else "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from selfreward import models
    from selfreward.config import ModelCfg
    from selfreward.engine import Request, Sampling, VLLMEngine

    engine = VLLMEngine(models.resolve("embedded:smollm2-135m-instruct"), ModelCfg(), 16)
    from selfreward import constitution, judging

    con = constitution.load(ROOT / "recipes/constitutions/default.md")
    seeds = [json.loads(line) for line in (ROOT / "recipes/seeds/instructions.jsonl").open()][:requests]
    reqs = [Request([{"role": "user", "content": judging.render(con, con.units()[0][1], s["instruction"],
                                                                "A short helpful answer. " * 12, "score_first")}],
                    seed=i, adapter=None if side == "base" else adapter, prefill="Score:")
            for i, s in enumerate(seeds)]
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
    engine.generate(reqs[:2], sampling)  # warm-up
    t0 = time.perf_counter()
    outs = engine.generate(reqs, sampling)
    wall = time.perf_counter() - t0
    prompt_tokens = sum(len(engine.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True))
                        for r in reqs)
    gen = sum(o.n_tokens for o in outs)
    return {"side": side, "wall_s": wall, "generated_tokens": gen, "prompt_tokens": prompt_tokens,
            "texts": [o.text for o in outs]}


def make_adapter(path: Path) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selfreward import models

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(models.resolve("embedded:smollm2-135m-instruct"))
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, p in lora.named_parameters():  # small random deltas: outputs stay close to the base model
        if "lora_B" in name:
            p.data.normal_(0, 1e-3)
    lora.save_pretrained(path)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora_cpu.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.requests, args.max_tokens, args.adapter)))
        return
    import tempfile

    adapter = make_adapter(Path(tempfile.mkdtemp()) / "adapter")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for side in ("base", "lora-stock", "lora-grouped"):
            out = subprocess.run([sys.executable, __file__, "--worker", side, "--adapter", adapter,
                                  "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)],
                                 capture_output=True, text=True, check=True)
            runs.setdefault(side, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    same = sum(a == b for a, b in zip(runs["lora-stock"][0]["texts"], runs["lora-grouped"][0]["texts"]))
    same = f"{same}/{args.requests}"
    rows = []
    for side, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rows.append({"side": side, "median_wall_s": round(wall, 2), "walls": [round(r["wall_s"], 2) for r in rs],
                     "prompt_tokens": rs[0]["prompt_tokens"], "generated_tokens": rs[0]["generated_tokens"],
                     "tokens_per_s": round((rs[0]["prompt_tokens"] + rs[0]["generated_tokens"]) / wall, 1)})
    print(f"{args.requests} judge requests, max_tokens={args.max_tokens}, median of {args.repeats}; "
          f"greedy outputs identical between stock and grouped kernels (bf16): {same}")
    print("| side | median wall (s) | runs (s) | prompt+generated tokens/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['median_wall_s']} | {r['walls']} | {r['tokens_per_s']} |")
    stock = next(r for r in rows if r["side"] == "lora-stock")["median_wall_s"]
    grouped = next(r for r in rows if r["side"] == "lora-grouped")["median_wall_s"]
    print(f"grouped kernels: {stock / grouped:.2f}x faster than stock on LoRA requests")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "identical_outputs": same, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
