"""vLLM's own C++ CPU kernels for RMSNorm and rotary embeddings, which its CPU build leaves unused with LoRA.

With LoRA enabled, vLLM's CPU platform turns compilation off (`CompilationMode.NONE`), but it keeps the custom
ops off too (`custom_ops: ['none']`, the setting meant for an inductor-compiled graph, which would fuse them), and
its IR dispatch offers the C++ RMSNorm to GPUs only. Every decode step then runs RMSNorm and rotary embeddings as
dozens of small eager torch ops per layer: about a fifth of a decode step for the 135M demo model. The CPU
build ships C++ kernels for both (`torch.ops._C.rms_norm`, `fused_add_rms_norm`, `rotary_embedding`); `install`
registers the RMSNorm ones as a CPU provider of vLLM's IR ops, and `llm_kwargs` tells `vllm.LLM` to prefer them
and to use the rotary custom op. Arguments the kernels do not take (a variance size, a weight of another dtype
or none, strided inputs) fall back to vLLM's native implementation.

`bench/generation.py` measures the effect; `tests/integration/test_engines.py` checks, in float32, that vLLM
with these kernels and transformers give the same log-probabilities. `SELFREWARD_STOCK_CPU_OPS=1` keeps vLLM's
defaults.
"""
from __future__ import annotations

import torch

PROVIDER = "selfreward_cpu"
_installed = False


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


def install() -> None:
    """Register the CPU kernels as vLLM IR implementations (once per process, before `vllm.LLM`)."""
    global _installed
    if _installed:
        return
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
    _installed = True


def llm_kwargs() -> dict:
    """What `vllm.LLM` needs to dispatch to the kernels `install` registered."""
    priority = [PROVIDER, "native"]
    return {"kernel_config": {"ir_op_priority": {"rms_norm": priority, "fused_add_rms_norm": priority}},
            "compilation_config": {"custom_ops": ["none", "+rotary_embedding"]}}
