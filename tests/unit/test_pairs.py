from selfreward.judge.pairs import build_pairs, mean_scores


def _setup(scores_by_response):
    prompts = [{"id": "p0", "instruction": "Say hi."}, {"id": "p1", "instruction": "Say bye."}]
    responses, judgments = [], []
    for rid, scores in scores_by_response.items():
        pid, s = rid.split("-")
        responses.append({"id": rid, "prompt_id": pid, "sample": int(s[1:]), "response": f"text {rid}", "seed": 1})
        for n, sc in enumerate(scores):
            judgments.append({"response_id": rid, "prompt_id": pid, "judgment": n, "raw": f"Score: {sc}",
                              "score": sc})
    return prompts, responses, judgments


def test_best_vs_worst_with_provenance():
    prompts, responses, judgments = _setup({"p0-r0": [2, 4], "p0-r1": [5], "p0-r2": [1], "p1-r0": [3], "p1-r1": [3]})
    pairs, dropped = build_pairs(prompts, responses, judgments, 0.0, {"judge": "M0"})
    assert len(pairs) == 1 and dropped["tie"] == 1
    p = pairs[0]
    assert p["prompt"] == [{"role": "user", "content": "Say hi."}]
    assert p["chosen"][0]["content"] == "text p0-r1" and p["rejected"][0]["content"] == "text p0-r2"
    assert p["provenance"]["chosen_score"] == 5 and p["provenance"]["rejected_score"] == 1
    assert p["provenance"]["scores"]["p0-r0"] == 3.0
    assert p["provenance"]["judge"] == "M0" and p["provenance"]["prompt_id"] == "p0"


def test_unparsed_judgments_never_count():
    prompts, responses, judgments = _setup({"p0-r0": [None], "p0-r1": [4], "p1-r0": [None, 2], "p1-r1": [None]})
    assert mean_scores(judgments) == {"p0-r1": 4.0, "p1-r0": 2.0}
    pairs, dropped = build_pairs(prompts, responses, judgments, 0.0, {})
    assert pairs == [] and dropped["fewer_than_two_scored"] == 2


def test_margin_and_deterministic_tie_break():
    prompts, responses, judgments = _setup({"p0-r0": [4], "p0-r1": [4], "p0-r2": [3], "p1-r0": [5], "p1-r1": [1]})
    pairs, dropped = build_pairs(prompts, responses, judgments, 2.0, {})
    assert [p["provenance"]["prompt_id"] for p in pairs] == ["p1"] and dropped["below_margin"] == 1
    pairs, _ = build_pairs(prompts, responses, judgments, 0.0, {})
    assert pairs[0]["provenance"]["chosen_id"] == "p0-r0"  # first of the equally best samples
