"""Token scoring for eval's KL: the loaded vLLM engine (prompt log-probabilities) against the second,
transformers + PEFT copy of the weights that eval used before.

One process, as in the eval stage: the vLLM engine on the embedded model is loaded first (RSS measured), the
same score requests (64 responses of the model, each scored under the base model and under a LoRA adapter on
every target module the recipe trains) go through `VLLMEngine.score` and then through `HFEngine.score`, which
has to load its own copy of the weights (RSS measured again). Median of --repeats; agreement between the two
(max absolute difference of per-token log-probabilities) is printed too.

    .venv/bin/python bench/scoring.py [--responses 64] [--repeats 3]

Writes bench/results/scoring.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import _adapter, _machine  # noqa: E402  (same adapter construction as the generation bench)

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"


def _rss_mib() -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--responses", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipe", default="smollm2-135m-cpu")
    ap.add_argument("--tmp", default="/tmp/selfreward-bench-scoring")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from selfreward import models
    from selfreward.config import RECIPES_DIR, find_recipe, load
    from selfreward.engine import HFEngine, Request, Sampling, ScoreRequest, VLLMEngine
    from selfreward.records import read_jsonl

    cfg = load(find_recipe(args.recipe))
    path = models.resolve(cfg.model.ref)
    rss0 = _rss_mib()
    rank = next(r for r in (16, 32, 64, 128, 256, 320, 512) if r >= cfg.train.lora_r)
    engine = VLLMEngine(path, cfg.model, max_lora_rank=rank)
    rss_vllm = _rss_mib()
    adapter = _adapter(cfg, path, Path(args.tmp) / "adapter")
    seeds = read_jsonl(RECIPES_DIR / "seeds" / "instructions.jsonl")
    msgs = [[{"role": "user", "content": seeds[i % len(seeds)]["instruction"]}] for i in range(args.responses)]
    outs = engine.generate([Request(m, i) for i, m in enumerate(msgs)], Sampling(temperature=1.0, max_tokens=128))
    reqs = [ScoreRequest(m, o.text, a) for a in (None, adapter) for m, o in zip(msgs, outs)]
    tokens = sum(o.n_tokens for o in outs) * 2

    def timed(fn):
        walls, got = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            got = fn(reqs)
            walls.append(time.perf_counter() - t)
        return walls, got

    v_walls, v = timed(engine.score)
    t = time.perf_counter()
    hf = HFEngine(path, cfg.model)
    hf_load = time.perf_counter() - t
    rss_both = _rss_mib()
    h_walls, h = timed(hf.score)
    diff = max(abs(a - b) for ra, rb in zip(v, h) for a, b in zip(ra, rb))
    result = {"machine": _machine(), "args": vars(args), "dtype": engine.dtype, "requests": len(reqs),
              "scored_tokens": tokens,
              "vllm": {"median_s": statistics.median(v_walls), "runs_s": v_walls, "rss_mib": rss_vllm - rss0},
              "transformers_copy": {"median_s": statistics.median(h_walls), "runs_s": h_walls, "load_s": hf_load,
                                    "extra_rss_mib": rss_both - rss_vllm},
              "max_abs_logprob_diff": diff}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\n{len(reqs)} score requests ({tokens} completion tokens; base and LoRA), {engine.dtype}, {_machine()}\n"
          "| scorer | median (s) | runs (s) | scored tokens/s | memory it adds (MiB RSS) |\n|---|---|---|---|---|\n"
          f"| vLLM engine (prompt logprobs), after | {statistics.median(v_walls):.1f} | "
          f"{', '.join(f'{x:.1f}' for x in v_walls)} | {tokens / statistics.median(v_walls):.0f} | 0 (already loaded) |\n"
          f"| transformers + PEFT copy, before | {statistics.median(h_walls):.1f} | "
          f"{', '.join(f'{x:.1f}' for x in h_walls)} | {tokens / statistics.median(h_walls):.0f} | "
          f"{rss_both - rss_vllm:.0f} (+ {hf_load:.1f} s to load) |\n"
          f"max |difference| of per-token log-probabilities: {diff:.3f} (both {engine.dtype})")


if __name__ == "__main__":
    main()
