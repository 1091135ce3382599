"""Grouped LoRA kernels for vLLM's CPU build.

vLLM's torch reference ops (used by its CPU punica wrapper) gather one LoRA weight matrix per token
(`lora_weights[indices]` -> [tokens, out, in]) and contract with einsum. For a prefill of thousands of tokens
that materialises gigabytes and makes a LoRA request several times slower than the base model. The
replacements below compute exactly the same products, one matmul per distinct adapter index in the batch
(indexing, including -1, follows the original). bench/lora_cpu.py measures both.

Prompt log-probabilities: vLLM computes them by passing one request's prompt hidden states (one row per prompt
token) through the LoRA logits processor, whose mapping (`sampler_indices`) has one entry per request of the
batch. The stock ops then fail on the shape mismatch and a row-per-index kernel would read rows no index covers.
No row-to-adapter mapping exists on that path, so it is served only when it cannot matter: when no loaded
adapter has LoRA weights on the LM head (the delta is then zero for every row); otherwise it raises.
"""
from __future__ import annotations

import torch


def _lora_products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    if indices.numel() == 1 and inputs.shape[0] != 1:  # one index shared by every row
        indices = indices.expand(inputs.shape[0])
    if indices.numel() != inputs.shape[0]:  # prompt logprobs through the LM head (see the module docstring)
        if torch.count_nonzero(weights):
            raise RuntimeError("prompt log-probabilities through a LoRA adapter on the LM head are not supported "
                               "on vLLM's CPU build (no row-to-adapter mapping); train adapters without lm_head")
        return inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    out = inputs.new_empty((inputs.shape[0], weights.shape[1]))
    for idx in torch.unique(indices).tolist():
        rows = (indices == idx).nonzero(as_tuple=True)[0]
        out[rows] = inputs[rows] @ weights[idx].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = _lora_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = _lora_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = _lora_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def install() -> None:
    """Swap the kernels in the modules that call them (the sgmv_* variants call the module-level bgmv_*)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
