"""Known-answer checks: corruptions are real, deterministic per seed, and accuracy counts only judged checks."""
import pytest

from selfreward.judge import known_answer
from selfreward.stats import kendall_tau_b, spearman, wilson

TEXT = ("Water boils at 100 degrees Celsius at sea level. At higher altitude it boils at a lower temperature. "
        "This is because the air pressure is lower. Cooks adjust their recipes for it.")


def _data(n=8):
    prompts = [{"id": f"p{i}", "instruction": f"Question {i}?"} for i in range(n)]
    responses = [{"id": f"p{i}-r0", "prompt_id": f"p{i}", "response": TEXT.replace("Water", f"Water {i}"),
                  "finish_reason": "stop"} for i in range(n)]
    return prompts, responses


def test_checks_cover_every_corruption_and_differ_from_the_original():
    prompts, responses = _data()
    checks = known_answer.build(prompts, responses, 8, seed=3)
    assert [c["kind"] for c in checks] == list(known_answer.CORRUPTIONS) * 2
    assert checks == known_answer.build(prompts, responses, 8, seed=3)
    for c in checks:
        assert c["corrupted"].strip() != c["original"].strip()
        if c["kind"] == "truncate":
            assert c["original"].startswith(c["corrupted"]) and not c["corrupted"].endswith(".")
        if c["kind"] == "shuffle":
            assert sorted(c["corrupted"].split()) == sorted(c["original"].split())
        if c["kind"] == "other_prompt":
            assert c["corrupted"] in [r["response"] for r in responses if r["prompt_id"] != c["prompt_id"]]
        if c["kind"] == "repeat":
            assert c["corrupted"].startswith(c["original"]) and len(c["corrupted"]) > len(c["original"])
    assert len(known_answer.items(checks)) == 16


def test_accuracy_with_intervals_and_unjudged():
    prompts, responses = _data()
    checks = known_answer.build(prompts, responses, 8, seed=0)
    scores = {}
    for i, c in enumerate(checks):
        scores[f"{c['id']}-original"] = 4.0
        scores[f"{c['id']}-corrupted"] = 2.0 if i < 5 else 4.0  # ties are not "higher"
    del scores[f"{checks[7]['id']}-corrupted"]  # unjudged
    acc = known_answer.accuracy(checks, scores)
    assert acc["n"] == 7 and acc["unjudged"] == 1 and acc["accuracy"] == pytest.approx(5 / 7)
    lo, hi = acc["ci95"]
    assert lo < 5 / 7 < hi
    assert acc["by_corruption"]["truncate"]["n"] == 2


def test_statistics_against_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(4 / 5)  # tie-corrected (scipy: 0.8)
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (None, None)
