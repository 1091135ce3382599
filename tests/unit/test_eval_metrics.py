import pytest

from selfreward.eval import gate
from selfreward.eval.metrics import both_order_outcome, distinct_n, kl_estimate
from selfreward.config import EvalCfg


def test_distinct2():
    assert distinct_n(["a b c", "a b c"]) == pytest.approx(2 / 4)
    assert distinct_n(["the cat sat", "a dog ran"]) == 1.0
    assert distinct_n(["word"]) == 0.0


def test_both_order():
    assert both_order_outcome("A", "B") == 1.0  # candidate first then second: wins both
    assert both_order_outcome("B", "A") == 0.0
    assert both_order_outcome("A", "A") == 0.5  # position bias cancels
    assert both_order_outcome(None, "A") is None


def test_kl_estimate():
    seq, tok = kl_estimate([[-1.0, -1.0], [-2.0]], [[-2.0, -1.5], [-2.0]])
    assert seq == pytest.approx(0.75) and tok == pytest.approx(0.5)


def _metrics(**kw):
    m = {"win_rate": 0.6, "length_ratio": 1.1, "distinct2_ratio": 0.95, "judge_valid_rate_delta": -0.1}
    m.update(kw)
    return m


def test_gate_passes_and_fails_with_reasons():
    ev = EvalCfg()
    d = gate.decide(_metrics(), ev)
    assert d["passed"] and len(d["checks"]) == 5 and "all 5 checks passed" in d["reasons"][0]
    d = gate.decide(_metrics(win_rate=0.3, length_ratio=2.5), ev)
    assert not d["passed"]
    assert any("win_rate 0.300 fails >= 0.5" in r for r in d["reasons"])
    assert any("length_ratio 2.500 fails <= 2.0" in r for r in d["reasons"])
    d = gate.decide(_metrics(judge_valid_rate_delta=-0.3), ev)
    assert not d["passed"] and d["reasons"] == ["judge_valid_rate_delta -0.300 fails >= -0.2"]
    d = gate.decide(_metrics(win_rate=None), ev)
    assert not d["passed"] and "could not be measured" in d["reasons"][0]


def test_both_order_probability_cancels_position_bias():
    from selfreward.eval.metrics import both_order_probability

    # a judge biased towards A by +0.3 in both orders: the candidate's 0.6 preference survives
    assert both_order_probability(0.6 + 0.3, 0.4 + 0.3) == pytest.approx(0.6)
    assert both_order_probability(0.9, None) is None
