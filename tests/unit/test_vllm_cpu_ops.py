"""The C++ RMSNorm kernels registered for vLLM's CPU build, against vLLM's own native implementations, in each
dtype the engine may pick on a CPU: float32 to 1e-5 of native; bfloat16 against the exact result (computed in
float32 from the same bf16 inputs), where both the kernel and native must lie within one bf16 unit in the last
place (bf16's epsilon times the value) per rounding on native's path: native rounds RMSNorm twice (before and
after the weight) and the residual sum once more; the kernel rounds less often, but how it rounds differs by
CPU (on an AVX2-only EPYC it truncates, up to 0.99 of a unit per rounding, where native and kernel differed from
each other by 1.6 units; a bound of one unit between them held on an AVX512-BF16 CPU only). Also: arguments the kernels do not take go to the native
implementation, and the in-place form returns x + residual as the residual."""
import pytest
import torch

from selfreward import vllm_cpu_ops

ir = pytest.importorskip("vllm.ir")
vllm_cpu_ops.install()


def _exact(x, weight, eps):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def _close(got, want, exact, dtype, roundings):
    """float32: the kernel agrees with native to 1e-5 (relative); bfloat16: each is within one unit in the last
    place of the exact result per rounding on the way."""
    if dtype == torch.float32:
        scale = want.abs().clamp(min=1.0)
        return bool(((got - want).abs() / scale).max() <= 1e-5)
    ulp = roundings * torch.finfo(dtype).eps * exact.abs() + torch.finfo(dtype).tiny
    return all(bool(((y.float() - exact).abs() <= ulp).all()) for y in (got, want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_vllm_native(dtype):
    torch.manual_seed(0)
    x, w = torch.randn(37, 576, dtype=dtype) * 3, torch.randn(576, dtype=dtype)
    op = ir.ops.rms_norm
    with op.set_priority([vllm_cpu_ops.PROVIDER, "native"]):
        assert op.dispatch(x, w, 1e-5).provider == vllm_cpu_ops.PROVIDER
        got = op(x, w, 1e-5)
    want = op.impls["native"].impl_fn(x, w, 1e-5)
    assert got.dtype == dtype and _close(got, want, _exact(x, w, 1e-5), dtype, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_matches_vllm_native_in_place(dtype):
    torch.manual_seed(1)
    x, r, w = torch.randn(5, 64, dtype=dtype), torch.randn(5, 64, dtype=dtype), torch.randn(64, dtype=dtype)
    want_out, want_res = ir.ops.fused_add_rms_norm.impls["native"].impl_fn(x.clone(), r.clone(), w, 1e-6)
    x2, r2 = x.clone(), r.clone()
    out, res = vllm_cpu_ops.fused_add_rms_norm(x2, r2, w, 1e-6)
    assert out.data_ptr() == x2.data_ptr() and res.data_ptr() == r2.data_ptr()  # in place, as registered
    exact_sum = x.float() + r.float()
    assert _close(res, want_res, exact_sum, dtype, 1)
    assert _close(out, want_out, _exact(exact_sum, w, 1e-6), dtype, 3)


def test_arguments_the_kernel_does_not_take_fall_back_to_native():
    x = torch.randn(4, 64)
    op = ir.ops.rms_norm
    with op.set_priority([vllm_cpu_ops.PROVIDER, "native"]):
        assert op.dispatch(x, None, 1e-5).provider == "native"  # no weight
        assert op.dispatch(x, torch.ones(64, dtype=torch.bfloat16), 1e-5).provider == "native"  # weight dtype
        assert op.dispatch(x, torch.ones(64), 1e-5, 32).provider == "native"  # variance size
        assert op.dispatch(torch.randn(64, 4).T, torch.ones(64), 1e-5).provider == "native"  # strided


def _rows():
    """Peaked rows (nucleus of a few tokens), flat rows (nucleus beyond the top 256) and p = 1 rows."""
    torch.manual_seed(2)
    peaked = torch.randn(6, 4000) * 6
    flat = torch.randn(3, 4000) * 0.1
    logits = torch.cat([peaked, flat, torch.randn(2, 4000)])
    p = torch.tensor([0.95, 0.9, 0.5, 0.99, 0.95, 0.8, 0.95, 0.9, 0.5, 1.0, 1.0])
    return logits, p


def test_top_p_keeps_the_same_tokens_as_vllms_sort():
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    logits, p = _rows()
    want = apply_top_k_top_p_pytorch(logits.clone(), None, p.clone())
    got = vllm_cpu_ops.top_p(logits.clone(), p.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])  # kept logits are untouched
    kept = (~torch.isinf(got)).sum(dim=1)
    assert (kept[:6] < 256).all() and (kept[6:9] > 256).all()  # both paths ran: top-k and sort fallback
    assert (kept[9:] == 4000).all()  # p = 1 masks nothing


def test_top_p_keeps_as_many_tokens_as_vllm_when_logits_tie_at_the_boundary():
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    torch.manual_seed(4)
    # bf16-like logits: few distinct values, so the boundary of the nucleus falls inside a run of equal logits
    logits = (torch.randn(8, 4000) * 8).round() / 2
    p = torch.tensor([0.9, 0.95, 0.8, 0.5, 0.9, 0.95, 0.99, 0.7])
    want = apply_top_k_top_p_pytorch(logits.clone(), None, p.clone())
    got = vllm_cpu_ops.top_p(logits.clone(), p.clone())
    kept_want, kept_got = (~torch.isinf(want)).sum(dim=1), (~torch.isinf(got)).sum(dim=1)
    assert torch.equal(kept_got, kept_want)
    floor = torch.where(torch.isinf(want), torch.inf, want).min(dim=1).values
    ties = (logits == floor.unsqueeze(1)).sum(dim=1) - (want == floor.unsqueeze(1)).sum(dim=1)
    # rows the top-k path serves (fewer than 256 kept) that leave tied tokens out: the case this test is about
    assert ((ties > 0) & (kept_want < 256)).sum() >= 4
    # the same logits above the boundary, and the same number of the tied ones
    for row in range(8):
        above = logits[row] > floor[row]
        assert torch.equal(~torch.isinf(got[row]) & above, above)
        values_got, values_want = got[row][~torch.isinf(got[row])], want[row][~torch.isinf(want[row])]
        assert torch.equal(values_got.sort().values, values_want.sort().values)


def test_top_p_of_a_row_does_not_depend_on_its_batch():
    logits, p = _rows()
    whole = vllm_cpu_ops.top_p(logits.clone(), p.clone())
    for i in (0, 7, 10):
        alone = vllm_cpu_ops.top_p(logits[i:i + 1].clone(), p[i:i + 1].clone())
        assert torch.equal(alone[0], whole[i])


def test_the_sampler_calls_the_replacement_and_top_k_stays_vllms():
    from vllm.v1.sample.ops import topk_topp_sampler

    assert topk_topp_sampler.apply_top_k_top_p is vllm_cpu_ops._top_k_top_p
    logits = torch.randn(2, 100)
    got = topk_topp_sampler.apply_top_k_top_p(logits.clone(), torch.tensor([5, 10]), None)
    assert (~torch.isinf(got)).sum(dim=1).tolist() == [5, 10]


def _ranked_rows(rows: int):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 500, generator=g).round(decimals=1)  # rounded: many ties with the row's value
    values = x.gather(1, torch.randint(0, 500, (rows, 1), generator=g))
    return x, values


def test_token_ranks_match_vllms_function_across_row_blocks(monkeypatch):
    from vllm.v1.sample.ops import logprobs

    stock = logprobs.batched_count_greater_than._torchdynamo_orig_callable  # vLLM's function, uncompiled
    monkeypatch.setattr(vllm_cpu_ops, "RANK_ROWS_PER_BLOCK", 3)  # 10 rows: four blocks, the last one short
    x, values = _ranked_rows(10)
    got = vllm_cpu_ops.count_at_least(x, values)
    assert got.dtype == torch.int64
    assert torch.equal(got, stock(x, values))
    assert torch.equal(vllm_cpu_ops.count_at_least(x[:1], values[:1]), stock(x[:1], values[:1]))


def test_the_sampler_ranks_logprob_tokens_without_compiling():
    from torch._dynamo.utils import counters
    from vllm.v1.sample import sampler

    assert sampler.batched_count_greater_than is vllm_cpu_ops.count_at_least
    x, _ = _ranked_rows(6)
    logprobs = x.log_softmax(dim=-1)
    token_ids = torch.tensor([0, 5, 9, 499, 17, 250])
    before = dict(counters["stats"])
    out = sampler.Sampler.gather_logprobs(logprobs, 2, token_ids)
    assert dict(counters["stats"]) == before  # dynamo traced nothing
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    assert out.selected_token_ranks.tolist() == (logprobs >= chosen).sum(-1).tolist()
