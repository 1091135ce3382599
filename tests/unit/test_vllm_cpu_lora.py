"""The CPU LoRA kernels against an explicit per-row reference: which adapter each row gets (none for -1), the
sgmv (per-request metadata) and bgmv (per-token indices) forms, column slices, and the prompt-logprob path, where
the LM-head mapping has one index per request but the hidden states have one row per prompt token."""
import pytest
import torch

from selfreward.vllm_cpu_lora import (bgmv_expand, bgmv_expand_slice, bgmv_shrink, sgmv_expand_slice,
                                      sgmv_shrink)


def _reference(x, w, idx, scale=1.0):
    return torch.stack([scale * (x[r] @ w[i, 0].T) if i >= 0 else torch.zeros(w.shape[-2])
                        for r, i in enumerate(idx.tolist())])


def test_rows_follow_their_adapter_index_and_base_rows_get_nothing():
    torch.manual_seed(0)
    x, w = torch.randn(6, 8), torch.randn(3, 1, 4, 8)
    idx = torch.tensor([0, 2, -1, 2, 2, 0])
    out = torch.full((6, 4), float("nan"))
    bgmv_shrink(x, w, out, idx, scaling=0.5)
    assert torch.allclose(out, _reference(x, w, idx, 0.5), atol=1e-5)
    assert torch.equal(out[2], torch.zeros(4))  # -1 is no adapter, not the last slot


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_writes_only_its_columns(add_inputs):
    torch.manual_seed(1)
    x, w = torch.randn(5, 4), torch.randn(2, 1, 6, 4)
    idx = torch.tensor([1, 1, -1, 0, 0])
    y = torch.randn(5, 20)
    want = y.clone()
    delta = _reference(x, w, idx)
    want[:, 7:13] = want[:, 7:13] + delta if add_inputs else delta
    bgmv_expand_slice(x, w, y, idx, 7, 6, add_inputs)
    assert torch.allclose(y, want, atol=1e-5)


def test_sgmv_metadata_gives_what_the_per_token_indices_give():
    """The prefill form: runs of (start, length, adapter) as vLLM's compute_meta merges them."""
    torch.manual_seed(2)
    x, a, b = torch.randn(9, 8), torch.randn(2, 1, 4, 8), torch.randn(2, 1, 10, 4)
    idx = torch.tensor([0, 0, 0, -1, -1, 1, 1, 1, 0])
    starts, lens, per_run = torch.tensor([0, 3, 5, 8]), torch.tensor([3, 2, 3, 1]), torch.tensor([0, -1, 1, 0])
    buf_s, buf_b = torch.full((9, 4), float("nan")), torch.full((9, 4), float("nan"))
    sgmv_shrink(x, a, buf_s, starts, lens, per_run, 4, 3, 9, 2.0)
    bgmv_shrink(x, a, buf_b, idx, 2.0)
    assert torch.allclose(buf_s, _reference(x, a, idx, 2.0), atol=1e-5) and torch.equal(buf_s, buf_b)
    y_s, y_b = torch.ones(9, 12), torch.ones(9, 12)
    sgmv_expand_slice(buf_s, b, y_s, starts, lens, per_run, 4, 3, 9, 2, 10, True)
    bgmv_expand_slice(buf_b, b, y_b, idx, 2, 10, True)
    assert torch.equal(y_s, y_b)
    assert torch.allclose(y_s[:, 2:], 1 + _reference(buf_s, b, idx), atol=1e-5)


def test_indices_rewritten_in_place_are_followed():
    """vLLM rewrites the same index buffer every step; nothing may be remembered from an earlier step."""
    x, w = torch.randn(4, 8), torch.randn(2, 1, 4, 8)
    idx = torch.tensor([0, 0, 1, 1])
    first, second = torch.zeros(4, 4), torch.zeros(4, 4)
    with torch.inference_mode():
        bgmv_shrink(x, w, first, idx[:4])
        idx.copy_(torch.tensor([1, -1, -1, 0]))
        bgmv_shrink(x, w, second, idx[:4])
    assert torch.allclose(second, _reference(x, w, idx), atol=1e-5)
    assert not torch.allclose(first, second)


def test_one_input_row_is_added_to_every_output_row_as_the_stock_op_does():
    x, w, y = torch.randn(1, 4), torch.randn(1, 1, 6, 4), torch.randn(3, 6)
    want = y + x[0] @ w[0, 0].T
    bgmv_expand(x, w, y, torch.tensor([0]), add_inputs=True)
    assert torch.allclose(y, want, atol=1e-5)


def test_prompt_rows_get_no_delta_when_no_adapter_touches_the_lm_head():
    x, y = torch.randn(39, 8), torch.randn(39, 16)
    buffer, before = torch.full((39, 4), float("nan")), y.clone()
    bgmv_shrink(x, torch.zeros(2, 1, 4, 8), buffer, torch.tensor([0, -1, 1]))
    bgmv_expand(buffer, torch.zeros(2, 1, 16, 4), y, torch.tensor([0, -1, 1]))
    assert torch.equal(buffer, torch.zeros(39, 4)) and torch.equal(y, before)


def test_prompt_rows_refuse_an_lm_head_adapter():
    with pytest.raises(RuntimeError, match="LM head"):
        bgmv_shrink(torch.randn(39, 8), torch.randn(2, 1, 4, 8), torch.zeros(39, 4), torch.tensor([0, 1, 1]))
