"""train.cpu_logprob against TRL's own ChunkedLogProbFunction (its torch path, which CPUs run): the same
outputs and gradients, in float32 (to 1e-4) and under bf16 autocast (to bf16 rounding of the logits), with
temperature, logit scale and softcapping, with and without the entropy gradient."""
import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from selfreward.train.cpu_logprob import LogProbFunction

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _run(fn, hidden, weight, targets, autocast, entropy_grad, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn.apply(h, w, None, targets, kw.get("temperature", 1.0), 1000, kw.get("softcap"),
                       kw.get("logit_scale", 1.0), OUTPUTS)
    loss = (out[0] * torch.linspace(-1, 1, out[0].numel())).sum()
    if entropy_grad:
        loss = loss + 0.3 * out[1].sum()
    loss.backward()
    return out, h.grad, w.grad


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("kw", [{}, {"temperature": 0.7, "logit_scale": 1.3, "softcap": 20.0}])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_matches_trl_chunked_logprob(autocast, kw, entropy_grad):
    torch.manual_seed(0)
    hidden, weight = torch.randn(700, 48), torch.randn(3000, 48) * 0.3  # 700 tokens: two blocks of 512
    targets = torch.randint(0, 3000, (700,))
    targets[:5] = weight.mm(hidden[:5].T).argmax(0)  # some targets are the top-1 token
    want, want_h, want_w = _run(ChunkedLogProbFunction, hidden, weight, targets, autocast, entropy_grad, **kw)
    got, got_h, got_w = _run(LogProbFunction, hidden, weight, targets, autocast, entropy_grad, **kw)
    tol = 0.05 if autocast else 1e-4  # bf16 logits differ by up to a few bf16 units of ~10
    for name, a, b in zip(("logprobs", "entropy", "log_sum_sq_probs", "mean_logits"), got[:4], want[:4]):
        assert torch.allclose(a, b, atol=tol, rtol=tol), name
    assert (got[4] == want[4]).float().mean() >= (0.99 if autocast else 1.0)
    assert got[4][:5].all()
    scale = want_h.abs().max()
    assert (got_h - want_h).abs().max() <= (0.02 if autocast else 1e-4) * scale
    assert (got_w - want_w).abs().max() <= (0.02 if autocast else 1e-4) * want_w.abs().max()


def test_trl_uses_it_for_cpu_tensors_on_labelled_positions_only():
    from trl.trainer import utils

    from selfreward.train import cpu_logprob

    cpu_logprob.install()
    cpu_logprob.install()  # idempotent
    assert utils._use_triton(torch.device("cpu"))  # compact: prompt and padding positions are not scored
    out = utils._ChunkedLogProbFunction.apply(torch.randn(3, 8), torch.randn(10, 8), None,
                                              torch.tensor([1, 2, 3]), 1.0, 1000, None, 1.0, ())
    assert out[0].shape == (3,) and out[1] is None
