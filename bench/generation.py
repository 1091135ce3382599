"""Generation benchmark: the project's engine against stock vLLM and transformers `generate`, on the same work.

Workloads (the embedded model, the demo recipe's sampling settings):
- `demo`: 64 seed prompts x 4 samples, the recipe's temperature and top_p, stopping at EOS, up to 192 new tokens
  (what data_gen does each iteration);
- `fixed`: 64 prompts x 128 tokens, greedy, EOS ignored (same token count for every side).

Sides, each repetition in a fresh process (model load not timed, one warm-up call):
- `engine`: `selfreward.engine.VLLMEngine` with the recipe's model section (what the loop runs);
- `engine-stock-ops`: the same engine with vLLM's own op dispatch for RMSNorm and rotary embeddings
  (`SELFREWARD_STOCK_CPU_OPS=1`, eager torch ops on CPU with LoRA enabled): what `selfreward.vllm_cpu_ops` gains;
- `engine-lora`: the same engine serving a LoRA adapter on every target module the recipe trains (rank as in
  the recipe, small random weights), fixed workload only: its speed against `engine`'s base-model speed;
- `vllm`: `vllm.LLM(model)` with default settings (dtype from the checkpoint, its own scheduler defaults, prefix
  caching, chunked prefill, the engine core in its own process), except the CPU KV-cache size, which is set
  to the engine's (vLLM's default reserves 92% of the machine's memory and fails to start beside anything),
  and without per-request seeds (its default chunked prefill fails seeded requests on CPU); with
  `--vllm-dtype engine` it loads the model in the engine's dtype instead of the checkpoint's (the same where the
  CPU computes bf16 natively; fp32 where it does not, where the checkpoint's bf16 runs at under 1 GFLOP/s);
- `transformers`: `generate` on left-padded batches, same dtype; the batch size is picked from --hf-batches
  by a sweep in the first repetition (its best), then kept.

Reported per side and workload: generated tokens/s (median of the repetitions), peak RSS of the side's
process tree (largest process), the ratios, and the share of this CPU's compute roofline: tokens/s that a
matmul of the model's own shapes (measured in the same run) would allow at 2 x parameters FLOPs per token.

    .venv/bin/python bench/generation.py [--repeats 3] [--prompts 64] [--samples 4] [--recipe smollm2-135m-cpu]

Writes bench/results/generation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "generation.json"
SIDES = ("engine", "engine-stock-ops", "engine-lora", "vllm", "transformers")


def fail(prog: str, message: str) -> None:
    """A user's mistake: one line on stderr, exit 2, before any model loads (every bench script says it so)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _setup(args):
    from selfreward.config import RECIPES_DIR, find_recipe, load
    from selfreward.records import read_jsonl

    cfg = load(find_recipe(args.recipe))
    seeds = read_jsonl(RECIPES_DIR / "seeds" / "instructions.jsonl")
    if len(seeds) < args.prompts:
        seeds = (seeds * (args.prompts // len(seeds) + 1))
    return cfg, [[{"role": "user", "content": s["instruction"]}] for s in seeds[:args.prompts]]


def _work(cfg, prompts, args):
    """(name, [(messages, seed)], temperature, top_p, max_tokens, ignore_eos) for the side's workloads."""
    dg = cfg.data_gen
    demo = [(m, 1000 * i + j) for i, m in enumerate(prompts) for j in range(args.samples)]
    fixed = [(m, i) for i, m in enumerate(prompts)]
    return {"demo": (demo, dg.temperature, dg.top_p, 192, False), "fixed": (fixed, 0.0, 1.0, 128, True)}


def _adapter(cfg, model_path: str, out: Path) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if not (out / "adapter_config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_path)
        peft = get_peft_model(model, LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha,
                                                target_modules=list(cfg.train.lora_target_modules)))
        with torch.no_grad():  # small non-zero B: the adapter's products are computed and barely move the text
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)
        peft.save_pretrained(out)
    return str(out)


def run_side(side: str, args) -> dict:
    from selfreward import models

    cfg, prompts = _setup(args)
    path = models.resolve(cfg.model.ref)
    work = _work(cfg, prompts, args)
    if side == "engine-lora":
        work = {"fixed": work["fixed"]}
    out = {}
    if side == "engine-stock-ops":
        os.environ["SELFREWARD_STOCK_CPU_OPS"] = "1"
    if side in ("engine", "engine-lora", "engine-stock-ops"):
        from selfreward.engine import Request, Sampling, VLLMEngine

        rank = next(r for r in (16, 32, 64, 128, 256, 320, 512) if r >= cfg.train.lora_r)
        engine = VLLMEngine(path, cfg.model, max_lora_rank=rank)
        adapter = _adapter(cfg, path, Path(args.tmp) / "adapter") if side == "engine-lora" else None
        engine.generate([Request(prompts[0], 0, adapter)], Sampling(max_tokens=8))  # warm-up
        for name, (reqs, temp, top_p, max_tokens, ignore_eos) in work.items():
            t = time.perf_counter()
            comps = engine.generate([Request(m, s, adapter) for m, s in reqs],
                                    Sampling(temperature=temp, top_p=top_p, max_tokens=max_tokens,
                                             ignore_eos=ignore_eos))
            out[name] = {"wall_s": time.perf_counter() - t, "tokens": sum(c.n_tokens for c in comps),
                         "dtype": engine.dtype}
    elif side == "vllm":
        from vllm import LLM, SamplingParams

        # vLLM's defaults, except the CPU KV cache: by default it reserves 92% of the machine's memory, which fails
        # wherever anything else runs; it gets the same space as the engine
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.model.kv_cache_gib)
        if args.vllm_dtype == "engine":
            from selfreward.precision import inference_dtype

            llm = LLM(model=path, dtype=inference_dtype(cfg.model.dtype))
        else:
            llm = LLM(model=path)
        tok = llm.get_tokenizer()
        llm.generate(["Hello"], SamplingParams(max_tokens=8), use_tqdm=False)
        for name, (reqs, temp, top_p, max_tokens, ignore_eos) in work.items():
            texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in reqs]
            # no per-request seeds: with its default chunked prefill, vLLM's CPU build fails seeded requests
            # ("CPU Generator does not use offset"), the reason the engine turns chunked prefill off
            params = [SamplingParams(temperature=temp, top_p=top_p, max_tokens=max_tokens,
                                     ignore_eos=ignore_eos) for _ in reqs]
            t = time.perf_counter()
            outs = llm.generate(texts, params, use_tqdm=False)
            out[name] = {"wall_s": time.perf_counter() - t,
                         "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                         "dtype": str(llm.llm_engine.model_config.dtype).replace("torch.", "")}
    else:
        out = _run_transformers(path, cfg, work, args)
    return {"side": side, "peak_rss_mib": _tree_peak_kib() / 1024, "workloads": out}


def _tree_peak_kib() -> int:
    """Peak RSS of the largest process in this process tree (vLLM's default runs its engine core apart)."""
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {os.getpid()}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    for pid in tree - {os.getpid()}:
        try:
            line = next(x for x in open(f"/proc/{pid}/status") if x.startswith("VmHWM:"))
            peaks.append(int(line.split()[1]))
        except (OSError, StopIteration):
            pass
    return max(peaks)


def _run_transformers(path, cfg, work, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfreward.precision import inference_dtype

    dtype = inference_dtype(cfg.model.dtype)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    out = {}
    for name, (reqs, temp, top_p, max_tokens, ignore_eos) in work.items():
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in reqs]
        kwargs = dict(max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        kwargs.update(do_sample=True, temperature=temp, top_p=top_p) if temp > 0 else kwargs.update(do_sample=False)
        if ignore_eos:
            kwargs["min_new_tokens"] = max_tokens

        def one(batch: int) -> tuple[float, int]:
            torch.manual_seed(0)
            tokens, t = 0, time.perf_counter()
            for i in range(0, len(texts), batch):
                enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    seq = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
                for row in seq.tolist():  # count up to and including EOS; padding after it is wasted work
                    tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            return time.perf_counter() - t, tokens

        batches = [int(b) for b in args.hf_batches.split(",")]
        if args.hf_batch:
            batches = [args.hf_batch]
        sweep = {b: one(b) for b in batches}
        best = max(sweep, key=lambda b: sweep[b][1] / sweep[b][0])
        wall, tokens = sweep[best]
        out[name] = {"wall_s": wall, "tokens": tokens, "dtype": dtype, "batch": best,
                     "sweep_tokens_per_s": {b: n / w for b, (w, n) in sweep.items()}}
    return out


def roofline(path: str, dtype: str) -> dict:
    """Tokens/s a dense matmul of the model's own shapes allows at 2 x parameters FLOPs per token."""
    import torch
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(c).parameters())
    dt = getattr(torch, dtype)
    shapes = [(256, c.hidden_size, c.intermediate_size), (256, c.intermediate_size, c.hidden_size),
              (256, c.hidden_size, c.hidden_size)]
    rates = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        for _ in range(3):
            a @ b
        reps, t = 50, time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t))
    gflops = statistics.median(rates) / 1e9
    return {"params": params, "matmul_gflops": gflops, "tokens_per_s": gflops * 1e9 / (2 * params),
            "shapes": shapes, "dtype": dtype}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--recipe", default="smollm2-135m-cpu")
    ap.add_argument("--sides", default="engine,engine-lora,vllm,transformers")
    ap.add_argument("--hf-batches", default="32,64,128")
    ap.add_argument("--hf-batch", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--vllm-dtype", default="checkpoint",
                    help="the vllm side's dtype: checkpoint (vLLM's default) or engine (the engine's dtype here)")
    ap.add_argument("--tmp", default="/tmp/selfreward-bench-generation")
    ap.add_argument("--out", default=str(RESULTS), help="where the JSON result goes")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = [s for s in args.sides.split(",") if s not in SIDES]
    if unknown:
        fail("bench/generation.py", f"unknown side {unknown[0]!r} (known: {', '.join(SIDES)})")
    if min(args.repeats, args.prompts, args.samples) < 1:
        fail("bench/generation.py", "--repeats, --prompts and --samples must be at least 1")
    if args.vllm_dtype not in ("checkpoint", "engine"):
        fail("bench/generation.py", f"--vllm-dtype {args.vllm_dtype!r}: expected checkpoint or engine")
    if args.side:
        print("RESULT " + json.dumps(run_side(args.side, args)), flush=True)
        return
    from selfreward import models
    from selfreward.precision import inference_dtype

    cfg, _ = _setup(args)
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    path = models.resolve(cfg.model.ref)
    roof = roofline(path, inference_dtype(cfg.model.dtype))
    print(f"roofline: {roof['matmul_gflops']:.1f} GFLOP/s matmul ({roof['dtype']}) -> "
          f"{roof['tokens_per_s']:.0f} tokens/s at 2 x {roof['params'] / 1e6:.1f}M FLOPs/token", flush=True)
    runs: dict = {}
    hf_batch = {}
    for rep in range(args.repeats):
        for side in args.sides.split(","):
            cmd = [sys.executable, __file__, "--side", side, "--repeats", "1", "--prompts", str(args.prompts),
                   "--samples", str(args.samples), "--recipe", args.recipe, "--tmp", args.tmp,
                   "--hf-batches", args.hf_batches, "--vllm-dtype", args.vllm_dtype]
            if side == "transformers" and hf_batch:
                cmd += ["--hf-batch", str(hf_batch["demo"])]  # the sweep's best, kept after repetition 0
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"side {side} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            res = json.loads(line[7:])
            if side == "transformers" and not hf_batch:
                hf_batch = {w: r["batch"] for w, r in res["workloads"].items()}
            runs.setdefault(side, []).append(res)
            for w, r in res["workloads"].items():
                print(f"rep {rep} {side} {w}: {r['tokens'] / r['wall_s']:.1f} tokens/s "
                      f"({r['tokens']} tokens, {r['wall_s']:.1f}s), peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    table = {}
    for side, rs in runs.items():
        for w in rs[0]["workloads"]:
            tps = [r["workloads"][w]["tokens"] / r["workloads"][w]["wall_s"] for r in rs]
            table.setdefault(w, {})[side] = {
                "tokens_per_s": statistics.median(tps), "runs_tokens_per_s": tps,
                "tokens": [r["workloads"][w]["tokens"] for r in rs], "dtype": rs[0]["workloads"][w]["dtype"],
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                "roofline_share": statistics.median(tps) / roof["tokens_per_s"],
                **({"batch": rs[0]["workloads"][w]["batch"]} if side == "transformers" else {})}
    ratios = {}
    for w, sides in table.items():
        e = sides.get("engine", {}).get("tokens_per_s")
        for other in ("engine-stock-ops", "vllm", "transformers"):
            if e and other in sides:
                ratios[f"{w}: engine / {other}"] = e / sides[other]["tokens_per_s"]
    if "engine-lora" in table.get("fixed", {}) and "engine" in table.get("fixed", {}):
        ratios["fixed: engine-lora / engine"] = (table["fixed"]["engine-lora"]["tokens_per_s"]
                                                 / table["fixed"]["engine"]["tokens_per_s"])
    result = {"machine": _machine(), "args": vars(args), "roofline": roof, "table": table, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for w, sides in table.items():
        print(f"\n{w}:\n| side | dtype | tokens/s (median) | runs | roofline share | peak RSS (MiB) |\n|---|---|---|---|---|---|")
        for side, r in sides.items():
            runs_s = ", ".join(f"{x:.0f}" for x in r["runs_tokens_per_s"])
            print(f"| {side}{' (batch %d)' % r['batch'] if 'batch' in r else ''} | {r['dtype']} | "
                  f"{r['tokens_per_s']:.1f} | {runs_s} | {100 * r['roofline_share']:.0f}% | {r['peak_rss_mib']:.0f} |")
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")


def _machine() -> str:
    try:
        name = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
