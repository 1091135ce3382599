"""Per-token log-probabilities through the LM head on the CPU: TRL's fused LM head, with whole-vocabulary kernels.

TRL 1.16's DPO trainer scores tokens with `ChunkedLogProbFunction` (`trl/kernels/chunked_logprob.py`): logits
are never materialised for more than a tile, and on devices without Triton each tile is folded into
online-logsumexp statistics by a dozen elementwise float32 torch ops, then recomputed in backward, whose
gradient products run in float32 (`_addmm_fp32`). It also scores every position there (prompt and padding
included; it compacts to the labelled positions only on Triton devices, to spare Neuron recompilations). On a
CPU that made the LM head of the 135M demo model, 21% of its parameters, take about 40% of each DPO step.

`LogProbFunction` computes the same outputs (log-probability of each target, and the optional entropy,
log-sum of squared probabilities, mean logit and top-1 flag) and the same gradients, one block of tokens at a
time against the whole vocabulary: one matmul in the autocast dtype (bf16 on AMX), then one max, one
exponentiation and sums over the block (log-normaliser, entropy, squared mass) and an in-place softmax gradient;
backward recomputes the block and contracts it with one matmul per block (bf16 products accumulate in float32
inside oneDNN and are rounded once). `install` makes TRL use it for CPU tensors and score only the labelled
positions there. `tests/unit/test_cpu_logprob.py` compares it with
TRL's function; `bench/dpo.py` measures the train stage. Written for TRL 1.16.0: `install` refuses another version
(`selfreward.patches`); `SELFREWARD_STOCK_CPU_LOGPROB=1` keeps TRL's own function.
"""
from __future__ import annotations

import torch

from selfreward import patches

OPT_OUT = "SELFREWARD_STOCK_CPU_LOGPROB"
WRITTEN_FOR = "1.16.0"  # TRL: the version whose `trl.trainer.utils` this patches

TOKENS_PER_BLOCK = 512  # a [512, vocab] float32 block: 100 MB for a 49k vocabulary


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, logit_scale: float, softcap: float | None,
            inv_t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Transformed float32 logits of a block, and tanh(z / softcap) when softcapped (for the gradient)."""
    z = (torch.mm(h, w.t()) if b is None else torch.addmm(b, h, w.t())).float()
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    t = None
    if softcap is not None:
        t = z.div_(softcap).tanh_()
        z = t * softcap
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z, t


class LogProbFunction(torch.autograd.Function):
    """Same arguments and results as `trl.kernels.ChunkedLogProbFunction` (`chunk_size` is unused)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        ctx.set_materialize_grads(False)
        cd = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        n = hidden.shape[0]
        f32 = dict(device=hidden.device, dtype=torch.float32)
        w, b = weight.to(cd), None if bias is None else bias.to(cd)
        inv_t = 1.0 / temperature
        log_z, logprobs = torch.empty(n, **f32), torch.empty(n, **f32)
        entropy = torch.empty(n, **f32) if "entropy" in outputs else None
        lssp = torch.empty(n, **f32) if "log_sum_sq_probs" in outputs else None
        mean = torch.empty(n, **f32) if "mean_logits" in outputs else None
        top1 = torch.empty(n, device=hidden.device, dtype=torch.bool) if "is_top1" in outputs else None
        with torch.autocast("cpu", enabled=False):
            for s in range(0, n, TOKENS_PER_BLOCK):
                e = min(s + TOKENS_PER_BLOCK, n)
                z, _ = _logits(hidden[s:e].to(cd), w, b, logit_scale, final_logit_softcapping, inv_t)
                m, top = z.max(dim=-1)  # the index of the first maximum, as TRL's ties rule wants
                p = z.sub(m.unsqueeze(1)).exp_()  # unnormalised probabilities
                total = p.sum(dim=-1)
                log_total = total.log()
                lz = m + log_total
                log_z[s:e] = lz
                logprobs[s:e] = z.gather(1, targets[s:e].unsqueeze(1)).squeeze(1) - lz
                if mean is not None:
                    mean[s:e] = z.mean(dim=-1)
                if top1 is not None:
                    top1[s:e] = top == targets[s:e]
                if entropy is not None:
                    entropy[s:e] = lz - torch.linalg.vecdot(p, z) / total
                if lssp is not None:
                    lssp[s:e] = torch.linalg.vecdot(p, p).log_() - 2 * log_total
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
        ctx.args = (cd, logit_scale, final_logit_softcapping, inv_t)
        ctx.mark_non_differentiable(*(x for x in (lssp, mean, top1) if x is not None))
        return logprobs, entropy, lssp, mean, top1

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, *_):
        if grad_logprobs is None and grad_entropy is None:
            return (None,) * 9
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        cd, logit_scale, softcap, inv_t = ctx.args
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w, b = weight.to(cd), None if bias is None else bias.to(cd)
        n = hidden.shape[0]
        grad_h = torch.empty(hidden.shape, device=hidden.device, dtype=hidden.dtype) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_b else None
        c = inv_t * logit_scale  # the chain rule through z = transform(logits)
        with torch.autocast("cpu", enabled=False):
            for s in range(0, n, TOKENS_PER_BLOCK):
                e = min(s + TOKENS_PER_BLOCK, n)
                h = hidden[s:e].to(cd)
                z, t = _logits(h, w, b, logit_scale, softcap, inv_t)
                lz = log_z[s:e].unsqueeze(1)
                glp = None if grad_logprobs is None else grad_logprobs[s:e].unsqueeze(1).float()
                if grad_entropy is not None:
                    # d entropy / dz_j = -p_j (log p_j + entropy); d log p_target / dz_j = 1[j = target] - p_j
                    log_p = z.sub_(lz)  # in place: z is not needed any more
                    g = log_p.exp()
                    coef = log_p.add_(entropy[s:e].unsqueeze(1)).mul_(grad_entropy[s:e].unsqueeze(1))
                    if glp is not None:
                        coef.add_(glp)
                    g.mul_(coef.mul_(-c))
                else:
                    g = z.sub_(lz).exp_().mul_(glp * -c)  # in place: z is not needed any more
                if glp is not None:
                    g.scatter_add_(1, targets[s:e].unsqueeze(1), glp * c)
                if t is not None:
                    g.mul_(1 - t * t)
                if need_h:
                    grad_h[s:e] = torch.mm(g.to(cd), w).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(g.t(), h.float())
                if need_b:
                    grad_b += g.sum(dim=0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None)


def install() -> bool:
    """TRL's fused LM head on CPU tensors: this function, on the labelled positions only. GPU tensors keep TRL's.
    False (nothing patched) under $SELFREWARD_STOCK_CPU_LOGPROB=1; `patches.PatchVersionError` on another TRL."""
    if not patches.check("selfreward.train.cpu_logprob", "trl", WRITTEN_FOR, OPT_OUT):
        return False
    from trl.trainer import utils

    if getattr(utils, "_selfreward_cpu_logprob", False):
        return True
    trl_function, trl_use_triton = utils._ChunkedLogProbFunction, utils._use_triton

    class _Dispatch:
        @staticmethod
        def apply(hidden, *args):
            return (LogProbFunction if hidden.device.type == "cpu" else trl_function).apply(hidden, *args)

    utils._ChunkedLogProbFunction = _Dispatch
    # `_fused_forward` compacts to labelled positions where this is true; it reads nothing else from it
    utils._use_triton = lambda device: device.type == "cpu" or trl_use_triton(device)
    utils._selfreward_cpu_logprob = True
    return True
