"""Where a decode step of the engine goes: one call of N requests x T greedy tokens under torch.profiler.

Loads the embedded SmolLM2-135M (or `--model`) in the engine the loop uses, warms it up, times one plain call
and one profiled call of the same work, and prints the torch ops with the most self CPU time. Wall time minus
the ops' total is what runs outside any torch op (vLLM's Python scheduler, input preparation, output
processing).

    .venv/bin/python bench/profile_decode.py [--requests 64] [--tokens 48] [--rows 30]
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from torch.profiler import ProfilerActivity, profile

    from selfreward import models
    from selfreward.config import ModelCfg
    from selfreward.engine import Request, Sampling, VLLMEngine

    engine = VLLMEngine(models.resolve(args.model), ModelCfg(dtype="auto", max_model_len=1024, kv_cache_gib=2), 16)
    reqs = [Request([{"role": "user", "content": f"Write a story about item {i}."}], seed=i)
            for i in range(args.requests)]
    sampling = Sampling(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    engine.generate(reqs[:8], sampling)  # warm-up
    start = time.perf_counter()
    engine.generate(reqs, sampling)
    plain = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        engine.generate(reqs, sampling)
        profiled = time.perf_counter() - start
    events = prof.key_averages()
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"{args.requests} requests x {args.tokens} tokens, {engine.dtype}: {plain:.2f} s plain, {profiled:.2f} s "
          f"profiled ({1000 * profiled / args.tokens:.0f} ms per step); torch ops {ops:.2f} s, outside them "
          f"{profiled - ops:.2f} s")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
