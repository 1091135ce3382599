"""Precision: which float type models run in on this machine, for inference and for training.

Contract: `native_bf16` says whether bf16 matmuls run natively here (a bf16-capable GPU, or a CPU with
AVX512-BF16 or AMX); `inference_dtype` is the dtype engines load a model in (the recipe's `model.dtype`, or for
`auto` the fastest exact-enough one here); `use_bf16` decides bf16 autocast for training (`train.precision`).
Only torch is asked, and only when a function is called: importing this module imports nothing heavy.
"""
from __future__ import annotations


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX. On an
    AVX2-only CPU torch's bf16 matmul ran 28x slower than fp32 (0.9 against 24.9 GFLOP/s)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def inference_dtype(requested: str) -> str:
    """The dtype engines load the model in: as requested, or for `auto` the fastest exact-enough one here."""
    if requested != "auto":
        return requested
    import torch

    if native_bf16():
        return "bfloat16"
    return "float16" if torch.cuda.is_available() else "float32"


def use_bf16(precision: str) -> bool:
    """bf16 autocast: on CPUs with AVX512-BF16 or AMX it trains about 1.9x faster than fp32 (docs/benchmarks.md)."""
    if precision != "auto":
        return precision == "bf16"
    return native_bf16()
