"""New prompts: M(k-1) writes them from few-shot seed examples (self-instruct), or they are drawn from a dataset.

Contract: both sources filter against everything seen so far (seeds, earlier iterations' prompts, prompts
accepted in this iteration) with the self-instruct ROUGE-L near-duplicate filter; self-instruct prompts also pass
the length, symbol and banned-word filters, which suit synthesised text but not a user's own data. A dataset's
rows are walked in an order drawn with the run seed, and a row an earlier iteration used is never drawn again.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from selfreward.engine import Request, Sampling, seed_for

REQUEST = (
    "You are asked to come up with a new task for an AI assistant. Here are some examples of tasks:\n\n"
    "{examples}\n\n"
    "Write one new task that is different from all the examples. Reply with the task only, on one line."
)
_PREFIX = re.compile(r"^\s*(?:\**\s*)?(?:new\s+)?(?:task|instruction)\s*\d*\s*[:.\-]\s*", re.IGNORECASE)


def build_request(seeds: list[dict], fewshot: int, seed: int, adapter: str | None,
                  prefill: str = "") -> tuple[Request, list[str]]:
    rng = random.Random(seed)
    shots = rng.sample(seeds, fewshot)
    examples = "\n".join(f"Task: {s['instruction']}" for s in shots)
    msg = [{"role": "user", "content": REQUEST.format(examples=examples)}]
    return Request(msg, seed=seed, adapter=adapter, prefill=prefill), [s["id"] for s in shots]


def clean(text: str) -> str:
    """The first non-empty line, without a 'Task:' label or wrapping quotes."""
    for line in text.strip().splitlines():
        line = _PREFIX.sub("", line.strip().strip('"*').strip()).strip().strip('"*').strip()
        if line:
            return line
    return ""


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 over word tokens (the self-instruct similarity filter)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def reject_reason(text: str, dg, seen: list[list[str]]) -> str | None:
    """Why an instruction is filtered out, or None if it is accepted."""
    words = tokens(text)
    if not text:
        return "empty"
    if not text[0].isalnum():
        return "starts_with_symbol"
    if not text.isascii():
        return "non_ascii"
    if len(words) < dg.min_words:
        return "too_short"
    if len(words) > dg.max_words:
        return "too_long"
    banned = {w.lower() for w in dg.banned_words}
    if banned & set(words):
        return "banned_word"
    if any(rouge_l(words, s) >= dg.max_similarity for s in seen):
        return "near_duplicate"
    return None


def synthesize(engine, cfg, k: int, seeds: list[dict], seen_texts: list[str], adapter: str | None,
               round_dir: Path, run_sharded) -> tuple[list[dict], dict]:
    """Run synthesis rounds (each a shard on disk) until num_prompts pass the filters."""
    dg = cfg.data_gen
    seen = [tokens(t) for t in seen_texts]
    accepted: list[dict] = []
    reasons: dict[str, int] = {}
    sampling = Sampling(temperature=dg.prompt_temperature, top_p=1.0, max_tokens=dg.prompt_max_tokens)
    candidates = 0
    for r in range(dg.max_rounds):
        if len(accepted) >= dg.num_prompts:
            break
        slots = list(range(dg.prompts_per_round))

        def work(chunk, r=r):
            built = [build_request(seeds, dg.fewshot, seed_for(cfg.run.seed, k, "prompt", r, i), adapter,
                                   dg.prompt_prefill) for i in chunk]
            outs = engine.generate([b[0] for b in built], sampling)
            return [{"round": r, "slot": i, "raw": dg.prompt_prefill + o.text, "fewshot_ids": b[1]}
                    for i, b, o in zip(chunk, built, outs)]

        rows = run_sharded(slots, dg.prompts_per_round, round_dir, f"round{r:03d}", work,
                           desc=f"iter {k} prompts round {r}")
        for row in rows:
            candidates += 1
            text = clean(row["raw"])
            reason = reject_reason(text, dg, seen)
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            seen.append(tokens(text))
            accepted.append({"id": f"it{k:03d}-p{len(accepted):04d}", "instruction": text,
                             "source": "self-instruct", "round": r, "fewshot_ids": row["fewshot_ids"]})
            if len(accepted) >= dg.num_prompts:
                break
    stats = {"candidates": candidates, "accepted": len(accepted), "rejected": reasons,
             "acceptance_rate": round(len(accepted) / max(candidates, 1), 4)}
    return accepted, stats


def from_dataset(cfg, k: int, rows: list[dict], seen_texts: list[str], used_rows: set[int]) -> tuple[list[dict], dict]:
    """Up to num_prompts prompts from dataset rows ({row, prompt[, id]}) not used before, deduplicated."""
    dg = cfg.data_gen
    order = list(rows)
    random.Random(cfg.run.seed).shuffle(order)  # the same order every iteration: iteration k continues k-1's walk
    seen = [tokens(t) for t in seen_texts]
    accepted: list[dict] = []
    reasons: dict[str, int] = {}
    candidates = 0
    for row in order:
        if len(accepted) >= dg.num_prompts:
            break
        if row["row"] in used_rows:
            continue
        candidates += 1
        text = row["prompt"].strip() if isinstance(row["prompt"], str) else ""
        words = tokens(text)
        reason = "empty" if not words else "near_duplicate" if any(
            rouge_l(words, s) >= dg.max_similarity for s in seen) else None
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        seen.append(words)
        prompt = {"id": f"it{k:03d}-p{len(accepted):04d}", "instruction": text, "source": "dataset",
                  "dataset": dg.dataset.path, "dataset_row": row["row"]}
        if "id" in row:
            prompt["dataset_id"] = row["id"]
        accepted.append(prompt)
    stats = {"candidates": candidates, "accepted": len(accepted), "rejected": reasons,
             "acceptance_rate": round(len(accepted) / max(candidates, 1), 4), "pool_rows": len(rows)}
    return accepted, stats
