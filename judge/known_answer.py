"""Known-answer checks of the judge: an original response against a corrupted copy, whose order is known
without any judge.

Contract: `build(prompts, responses, n, seed)` makes up to n checks from the iteration's own responses,
cycling through the corruptions (cut mid-sentence, sentences shuffled, the answer to a different prompt, a
repeated paragraph), deterministically for a seed; `accuracy(checks, scores)` is how often the judge scored the
original strictly higher, overall and per corruption, with Wilson 95% intervals. A check whose either side has
no valid score is counted as unjudged, never as right or wrong.
"""
from __future__ import annotations

import random
import re

from selfreward.stats import wilson

CORRUPTIONS = ("truncate", "shuffle", "other_prompt", "repeat")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _truncate(text: str, rng: random.Random) -> str:
    words = text.split()
    cut = max(2, int(len(words) * rng.uniform(0.35, 0.6)))
    return " ".join(words[:cut]).rstrip(".!?,;:")


def _shuffle(text: str, rng: random.Random) -> str:
    units = [u for u in _SENTENCE.split(text.strip()) if u]
    if len(units) < 3:  # too few sentences: shuffle three-word chunks instead
        words = text.split()
        units = [" ".join(words[i:i + 3]) for i in range(0, len(words), 3)]
    shuffled = units[:]
    for _ in range(20):
        rng.shuffle(shuffled)
        if shuffled != units:
            break
    return " ".join(shuffled)


def _repeat(text: str, rng: random.Random) -> str:
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    first = paragraphs[0] if len(paragraphs) > 1 else " ".join(_SENTENCE.split(text.strip())[:2])
    return text.strip() + "\n\n" + "\n\n".join([first] * 3)


def build(prompts: list[dict], responses: list[dict], n: int, seed: int) -> list[dict]:
    instruction = {p["id"]: p["instruction"] for p in prompts}
    usable = [r for r in responses if not r.get("anchor") and len(r["response"].split()) >= 8]
    complete = [r for r in usable if r.get("finish_reason") != "length"]
    pool = complete if len(complete) >= n else usable  # prefer originals that were not cut by max_tokens
    rng = random.Random(seed)
    originals = rng.sample(sorted(pool, key=lambda r: r["id"]), min(n, len(pool)))
    checks = []
    for i, r in enumerate(originals):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        if kind == "truncate":
            corrupted = _truncate(r["response"], rng)
        elif kind == "shuffle":
            corrupted = _shuffle(r["response"], rng)
        elif kind == "repeat":
            corrupted = _repeat(r["response"], rng)
        else:
            others = [o for o in usable if o["prompt_id"] != r["prompt_id"]]
            if not others:
                continue
            corrupted = rng.choice(others)["response"]
        if corrupted.strip() == r["response"].strip():
            continue
        checks.append({"id": f"ka{i:03d}", "kind": kind, "response_id": r["id"], "prompt_id": r["prompt_id"],
                       "instruction": instruction[r["prompt_id"]], "original": r["response"],
                       "corrupted": corrupted})
    return checks


def items(checks: list[dict]) -> list[dict]:
    """Both sides of every check as judge items."""
    out = []
    for c in checks:
        out.append({"id": f"{c['id']}-original", "instruction": c["instruction"], "response": c["original"]})
        out.append({"id": f"{c['id']}-corrupted", "instruction": c["instruction"], "response": c["corrupted"]})
    return out


def _summary(outcomes: list[bool], unjudged: int) -> dict:
    lo, hi = wilson(sum(outcomes), len(outcomes))
    return {"n": len(outcomes), "unjudged": unjudged, "accuracy": sum(outcomes) / len(outcomes) if outcomes else None,
            "ci95": [lo, hi]}


def accuracy(checks: list[dict], scores: dict[str, float]) -> dict:
    per_kind: dict[str, list[bool]] = {k: [] for k in CORRUPTIONS}
    unjudged = {k: 0 for k in CORRUPTIONS}
    for c in checks:
        a, b = scores.get(f"{c['id']}-original"), scores.get(f"{c['id']}-corrupted")
        if a is None or b is None:
            unjudged[c["kind"]] += 1
        else:
            per_kind[c["kind"]].append(a > b)
    every = [o for v in per_kind.values() for o in v]
    return {**_summary(every, sum(unjudged.values())),
            "by_corruption": {k: _summary(v, unjudged[k]) for k, v in per_kind.items()}}
