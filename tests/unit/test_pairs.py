"""Pair strategies: best vs worst, margins, length control, anchors, truncation, identical texts, confirmation."""
import pytest

from selfreward.config import JudgeCfg
from selfreward.judge.pairs import build_pairs, confirm
from selfreward.judging import mean_scores

PROMPTS = [{"id": "p0", "instruction": "Say hi."}, {"id": "p1", "instruction": "Say bye."}]


def _responses(spec):
    """spec: response id -> (score, n_tokens[, finish_reason[, anchor]])."""
    rows, scores = [], {}
    for rid, (score, n, *rest) in spec.items():
        pid, s = rid.split("-")
        row = {"id": rid, "prompt_id": pid, "sample": int(s[1:]), "response": f"text {rid}", "n_tokens": n,
               "finish_reason": rest[0] if rest else "stop", "seed": 1}
        if len(rest) > 1 and rest[1]:
            row["anchor"] = True
        rows.append(row)
        if score is not None:
            scores[rid] = score
    return rows, scores


def _pairs(spec, **judge):
    responses, scores = _responses(spec)
    raw = {rid: [f"Score: {s}"] for rid, s in scores.items()}
    return build_pairs(PROMPTS, responses, scores, raw, JudgeCfg(**judge), {"judge": "M0"})


def test_mean_scores_skip_invalid_judgments():
    js = [{"response_id": "a", "score": 2}, {"response_id": "a", "score": None}, {"response_id": "a", "score": 4},
          {"response_id": "b", "score": None}]
    assert mean_scores(js) == {"a": 3.0}


def test_best_vs_worst_with_provenance():
    pairs, dropped = _pairs({"p0-r0": (3, 10), "p0-r1": (5, 10), "p0-r2": (1, 10), "p1-r0": (3, 10),
                             "p1-r1": (3, 10)})
    assert len(pairs) == 1 and dropped["tie"] == 1
    prov = pairs[0]["provenance"]
    assert (prov["chosen_id"], prov["rejected_id"]) == ("p0-r1", "p0-r2")
    assert prov["strategy"]["selection"] == "best_worst" and prov["judge"] == "M0"
    assert prov["chosen_truncated"] is False and prov["chosen_judge_raw"] == ["Score: 5"]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "text p0-r1"}]


def test_unscored_responses_never_pair_and_margins_hold():
    pairs, dropped = _pairs({"p0-r0": (None, 10), "p0-r1": (4, 10), "p1-r0": (4, 10), "p1-r1": (3, 10)},
                            min_margin=1.5)
    assert pairs == [] and dropped["fewer_than_two_scored"] == 1 and dropped["below_margin"] == 1


def test_a_truncated_response_is_never_chosen_unless_allowed():
    spec = {"p0-r0": (5, 192, "length"), "p0-r1": (3, 50), "p0-r2": (1, 60)}
    pairs, _ = _pairs(spec)
    prov = pairs[0]["provenance"]
    assert prov["chosen_id"] == "p0-r1" and prov["chosen_score"] == 3
    pairs, _ = _pairs(spec, allow_truncated=True)
    assert pairs[0]["provenance"]["chosen_id"] == "p0-r0" and pairs[0]["provenance"]["chosen_truncated"]
    pairs, dropped = _pairs({"p0-r0": (5, 192, "length"), "p0-r1": (1, 192, "length")})
    assert pairs == [] and dropped["no_complete_response"] == 1


def test_identical_texts_are_dropped():
    responses, scores = _responses({"p0-r0": (5, 10), "p0-r1": (1, 10)})
    responses[1]["response"] = responses[0]["response"]
    pairs, dropped = build_pairs(PROMPTS, responses, scores, {r: [] for r in scores}, JudgeCfg(), {})
    assert pairs == [] and dropped["identical"] == 1


def test_length_controlled_picks_shortest_top_and_longest_bottom():
    spec = {"p0-r0": (5, 120), "p0-r1": (5, 40), "p0-r2": (1, 30), "p0-r3": (1, 90), "p0-r4": (3, 10)}
    pairs, _ = _pairs(spec, pair_strategy="length_controlled")
    prov = pairs[0]["provenance"]
    assert (prov["chosen_id"], prov["rejected_id"]) == ("p0-r1", "p0-r3")
    assert prov["strategy"]["selection"] == "length_controlled"
    best, _ = _pairs(spec)
    assert best[0]["provenance"]["chosen_id"] == "p0-r0"  # best_worst ignores length
    banded, _ = _pairs(spec, pair_strategy="length_controlled", length_band=2.0)
    assert (banded[0]["provenance"]["chosen_id"], banded[0]["provenance"]["rejected_id"]) == ("p0-r4", "p0-r3")


def test_anchored_rejects_from_m0_anchors():
    spec = {"p0-r0": (4, 10), "p0-r1": (2, 10), "p0-r2": (3, 10, "stop", True), "p0-r3": (1, 10, "stop", True)}
    pairs, _ = _pairs(spec, pair_strategy="anchored")
    prov = pairs[0]["provenance"]
    assert (prov["chosen_id"], prov["rejected_id"]) == ("p0-r0", "p0-r3")
    plain, _ = _pairs(spec)
    assert plain[0]["provenance"]["rejected_id"] == "p0-r1"  # anchors are not candidates otherwise
    none, dropped = _pairs({"p0-r0": (4, 10), "p0-r1": (2, 10)}, pair_strategy="anchored")
    assert none == [] and dropped["fewer_than_two_scored"] == 2  # p0 has no anchors, p1 no responses


def test_both_order_confirmation():
    pairs, _ = _pairs({"p0-r0": (5, 10), "p0-r1": (1, 10), "p1-r0": (4, 10), "p1-r1": (2, 10)})
    kept, dropped = confirm(pairs, [0.8, 0.9], [0.3, 0.7])  # pair 1: the judge prefers position A both times
    assert [p["provenance"]["prompt_id"] for p in kept] == ["p0"] and dropped == 1
    assert kept[0]["provenance"]["confirmation"] == {"p_chosen_as_a": 0.8, "p_chosen_as_b": pytest.approx(0.7)}
