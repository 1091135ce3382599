"""DPO on one GPU: model-FLOPs utilisation of the train stage on randomly initialised models of real shapes.

Builds Qwen2.5-0.5B and Qwen2.5-1.5B configurations with random bf16 weights (no download; any tokenizer
directory, `--tokenizer`, supplies the chat template), makes `--pairs` synthetic preference pairs of real-looking
lengths, and trains on them with `selfreward.train.dpo.fit` under the `qwen2.5-1.5b-gpu` recipe's train
section (and, with `--sides selfreward,trl`, with a plain TRL DPOTrainer on the same model, LoRA and batch).

Model FLOPs per trained token, LoRA on a frozen base: 2N for the reference forward, 2N for the policy forward,
2N for the policy backward to the activations (no weight gradients for frozen weights), so 6N, N = the
parameters used in matmuls per token (all parameters; tied embeddings count once, as the LM head). Attention's
sequence-dependent FLOPs are left out (about 3% at these lengths), so the figure is a slight underestimate.
MFU = model FLOPs / wall time / the GPU's dense bf16 peak (`--peak-tflops`, default 989 for H100/H200 SXM).

    python bench/dpo_gpu.py --tokenizer DIR [--pairs 256] [--out results.json]
        [--variant 'NAME;train.dpo_overrides.gradient_checkpointing=false;...'] [--profile]

Each `--variant` runs the selfreward side again with more recipe overrides (`key.path=value`, separated by `;`),
named NAME in the table; the TRL side always runs with TRL's defaults at the same batch. `--profile` prints the
GPU kernels that took the most time in each selfreward run (torch.profiler).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # the published configurations of Qwen2.5-0.5B and -1.5B (config.json)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,  # smoke test
                 num_key_value_heads=1, vocab_size=49152, tie_word_embeddings=True),
}

def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
WORDS = ("the model answers each question with care and a short clear reason about time water light energy "
         "history music number garden city river language science simple example because therefore").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _pairs(n: int, seed: int, prompt_words: tuple[int, int], answer_words: tuple[int, int]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": _text(rng, rng.randint(*prompt_words))}]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": _text(rng, rng.randint(*answer_words))}],
                     "rejected": [{"role": "assistant", "content": _text(rng, rng.randint(*answer_words))}]})
    return rows


def _model_dir(name: str, tokenizer: str, root: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = root / name
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, torch_dtype="bfloat16",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _tokens(trainer) -> int:
    data = trainer.train_dataset
    return sum(2 * len(p) + len(c) + len(r)
               for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))


def _profiled(fn, top: int = 25):
    """fn() under torch.profiler; prints the kernels with the most GPU time, and their share of it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) or 1
    print(f"profile: {total / 1e6:.2f} s of GPU kernel time; the top {top}:")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {100 * e.self_device_time_total / total:5.1f}%  {e.count:7d}x  {e.key[:110]}")
    return out


def run(name: str, side: str, args, root: Path, extra: tuple[str, ...] = ()) -> dict:
    import torch

    from selfreward.config import find_recipe, load
    from selfreward.records import write_json, write_jsonl

    model_dir = root / name
    if not model_dir.exists():
        _model_dir(name, args.tokenizer, root)
    cfg = load(find_recipe(args.recipe), [f"model.ref={model_dir}", f"train.per_device_train_batch_size={args.batch}",
                                          f"train.gradient_accumulation_steps={args.accum}",
                                          f"run.output_dir={root / 'runs'}", f"run.name={name}-{side}", *extra])
    iter_dir = Path(tempfile.mkdtemp(dir=root)) / "iter_001"
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", _pairs(args.pairs, 0, (24, 96), (64, 320)))
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync()
    if side == "selfreward":
        from selfreward.train import dpo

        start = time.perf_counter()
        trainer, summary = _profiled(lambda: dpo.fit(cfg, iter_dir)) if args.profile else dpo.fit(cfg, iter_dir)
        _sync()
        wall = time.perf_counter() - start
    else:
        from datasets import load_dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        t = cfg.train
        start = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        data = load_dataset("json", data_files=str(iter_dir / "judge" / "pairs.jsonl"), split="train")
        trainer = DPOTrainer(model=model, processing_class=tok, train_dataset=data,
                             args=DPOConfig(output_dir=str(iter_dir / "trl"), per_device_train_batch_size=t.per_device_train_batch_size,
                                            gradient_accumulation_steps=t.gradient_accumulation_steps,
                                            num_train_epochs=1, learning_rate=t.learning_rate, beta=t.beta, seed=0,
                                            report_to=[], save_strategy="no", logging_steps=1, max_length=t.max_length),
                             peft_config=LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                                    target_modules=t.lora_target_modules, task_type="CAUSAL_LM"))
        trainer.train()
        _sync()
        wall = time.perf_counter() - start
    train_s = trainer.state.log_history[-1].get("train_runtime", wall)
    params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n and ".ref." not in n)
    tokens = _tokens(trainer)
    flops = 6 * params * tokens
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model": name, "side": side, "params": params, "tokens": tokens, "wall_s": wall, "train_runtime_s": train_s,
            "tokens_per_s": tokens / train_s, "mfu": flops / train_s / (args.peak_tflops * 1e12),
            "mfu_wall": flops / wall / (args.peak_tflops * 1e12), "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke test)"}


def _fail(message: str) -> None:
    """A user's mistake: one line on stderr, exit 2, before any model is built."""
    print(f"bench/dpo_gpu.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b")
    ap.add_argument("--sides", default="selfreward,trl")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--recipe", default="qwen2.5-1.5b-gpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME;key.path=value;... : the selfreward side again with these recipe overrides")
    ap.add_argument("--profile", action="store_true", help="print the top GPU kernels of each selfreward run")
    ap.add_argument("--out", default="bench/results/dpo_gpu.json")
    args = ap.parse_args()
    unknown = [m for m in args.models.split(",") if m not in SHAPES]
    if unknown:
        _fail(f"unknown model {unknown[0]!r} (known: {', '.join(SHAPES)})")
    if not (Path(args.tokenizer) / "tokenizer_config.json").is_file():
        _fail(f"--tokenizer {args.tokenizer}: not a tokenizer directory (no tokenizer_config.json)")
    variants = [v.split(";") for v in args.variant]
    bad = [v[0] for v in variants if len(v) < 2 or not v[0] or any("=" not in o for o in v[1:])]
    if bad:
        _fail(f"--variant {bad[0]!r}: expected NAME;key.path=value[;key.path=value...]")
    import torch

    if not torch.cuda.is_available() and args.models != "tiny":
        _fail("needs a CUDA GPU (--models tiny runs a CPU smoke test)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="dpo-gpu-"))
    runs = [(side, side, ()) for side in args.sides.split(",") if side]
    runs += [(v[0], "selfreward", tuple(v[1:])) for v in variants]
    rows = []
    for name in args.models.split(","):
        for rep in range(args.repeats):
            for label, side, extra in runs:
                r = run(name, side, args, root, extra) | {"side": label, "overrides": list(extra)}
                rows.append(r)
                print(f"{name} {label} rep {rep}: {r['tokens_per_s']:.0f} tokens/s, MFU {100 * r['mfu']:.1f}% "
                      f"(wall incl. load {100 * r['mfu_wall']:.1f}%), {r['steps']} steps, loss {r['final_loss']}, "
                      f"peak {r['peak_gpu_mem_gib']:.1f} GiB", flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    print(f"\n{rows[0]['gpu']}, {args.pairs} pairs, batch {args.batch} x accumulation {args.accum}, bf16\n"
          "| model | side | tokens/s (median) | MFU (median) | peak GPU memory (GiB) |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        for side in dict.fromkeys(label for label, _, _ in runs):
            rs = [r for r in rows if r["model"] == name and r["side"] == side]
            print(f"| {name} | {side} | {statistics.median(r['tokens_per_s'] for r in rs):.0f} | "
                  f"{100 * statistics.median(r['mfu'] for r in rs):.1f}% | {max(r['peak_gpu_mem_gib'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
