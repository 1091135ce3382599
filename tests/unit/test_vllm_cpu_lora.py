"""The grouped CPU LoRA kernels' handling of the prompt-logprob path, where the LM-head mapping has one index per
request but the hidden states have one row per prompt token."""
import pytest
import torch

from selfreward.vllm_cpu_lora import bgmv_expand, bgmv_shrink


def test_rows_follow_their_adapter_index():
    torch.manual_seed(0)
    x, w = torch.randn(5, 8), torch.randn(3, 1, 4, 8)
    idx = torch.tensor([0, 2, -1, 2, 0])
    out = torch.zeros(5, 4)
    bgmv_shrink(x, w, out, idx, scaling=0.5)
    for row, i in enumerate(idx.tolist()):
        assert out[row] == pytest.approx(0.5 * (x[row] @ w[i, 0].T), abs=1e-5)


def test_prompt_rows_get_no_delta_when_no_adapter_touches_the_lm_head():
    x, y = torch.randn(39, 8), torch.randn(39, 16)
    buffer, before = torch.full((39, 4), float("nan")), y.clone()
    bgmv_shrink(x, torch.zeros(2, 1, 4, 8), buffer, torch.tensor([0, -1, 1]))
    bgmv_expand(buffer, torch.zeros(2, 1, 16, 4), y, torch.tensor([0, -1, 1]))
    assert torch.equal(buffer, torch.zeros(39, 4)) and torch.equal(y, before)


def test_prompt_rows_refuse_an_lm_head_adapter():
    with pytest.raises(RuntimeError, match="LM head"):
        bgmv_shrink(torch.randn(39, 8), torch.randn(2, 1, 4, 8), torch.zeros(39, 4), torch.tensor([0, 1, 1]))
