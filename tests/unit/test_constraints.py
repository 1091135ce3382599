"""Verifiable constraints end to end without a model: data_gen attaches them (seeded, IFEval format, never a
held-out type, never on a probe's base prompt), the verifier's verdicts rank the pairs under each reward rule,
the self-judge's agreement with the verifier is counted, and intervals resample base prompts."""
import json

import pytest

from selfreward import ifeval
from selfreward.config import Config, JudgeCfg
from selfreward.data_gen import constraints
from selfreward.data_gen.prompts import reject_reason, tokens
from selfreward.eval import capability
from selfreward.judge import verify
from selfreward.judge.pairs import build_pairs
from selfreward.stats import bootstrap_mean

PROMPTS = [{"id": f"p{i}", "instruction": f"Explain idea number {i} to a friend."} for i in range(40)]


def _cfg(**cons):
    return Config.model_validate({"data_gen": {"constraints": {"share": 0.5, **cons}}})


def test_attach_is_seeded_ifeval_shaped_and_never_uses_a_held_out_type(tmp_path):
    cfg = _cfg(max_per_prompt=3, types=["change_case:english_lowercase", "change_case:english_capital",
                                        "punctuation:no_comma", "startend:end_checker"],
               hold_out_types=["detectable_content:postscript"])
    rows = constraints.attach(PROMPTS, cfg, 1)
    assert rows == constraints.attach(PROMPTS, cfg, 1)  # a rerun writes the same rows
    assert rows != constraints.attach(PROMPTS, cfg, 2)  # another iteration draws again
    constrained = [r for r in rows if r["instruction_id_list"]]
    assert len(constrained) == 20
    used = {iid for r in constrained for iid in r["instruction_id_list"]}
    assert used <= set(cfg.data_gen.constraints.types) and len(used) >= 3
    assert max(len(r["instruction_id_list"]) for r in rows) >= 2
    for r in constrained:
        ids = r["instruction_id_list"]
        # lm-eval's conflict table: lowercase and all-capitals never together
        assert not {"change_case:english_lowercase", "change_case:english_capital"} <= set(ids)
        for iid, kw in zip(ids, r["kwargs"]):
            assert ifeval.describe(iid, 0, kw)[0] in r["prompt"]  # the checker's own text with these kwargs
        assert r["prompt"] == r["instruction"] and r["prompt"].startswith(r["base_instruction"])
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(capability.read_ifeval(path)) == 40  # the prompts file is a valid IFEval input


def test_share_zero_leaves_prompts_alone_and_probe_bases_are_filtered():
    assert constraints.attach(PROMPTS, Config(), 1) == PROMPTS
    cfg = Config()
    seen = [tokens(t) for t in constraints.probe_bases(cfg)]
    # the base prompt of a shipped capability probe, which carries an instruction, is rejected as seen
    base = "Explain how a rainbow forms."
    assert reject_reason(base, cfg.data_gen, seen) == "near_duplicate"
    assert reject_reason("Describe how honeybees tell each other where to find flowers.", cfg.data_gen, seen) \
        == "near_duplicate"  # a drift probe whose instruction was written by hand
    assert reject_reason("Write a limerick about a cat who learns to play chess.", cfg.data_gen, seen) is None


def _responses(texts: dict[str, list[str]]):
    return [{"id": f"{pid}-r{i}", "prompt_id": pid, "sample": i, "response": t, "n_tokens": len(t.split()),
             "finish_reason": "stop", "seed": i} for pid, ts in texts.items() for i, t in enumerate(ts)]


LOWER = {"id": "a", "instruction": "Describe rain. Your entire response should be in English, and in all lowercase "
                                   "letters. No capital letters are allowed.",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}], "key": 0}
LOWER["prompt"] = LOWER["instruction"]
PLAIN = {"id": "b", "instruction": "Describe snow.", "instruction_id_list": [], "kwargs": [], "key": 1}


def _build(scores, rule, **judge):
    responses = _responses({"a": ["rain falls softly.", "Rain Falls.", "rain is wet and cold."],
                            "b": ["Snow is white.", "Snow melts."]})
    found = verify.verdicts([LOWER, PLAIN], responses)
    raw = {rid: [] for rid in scores}
    jc = JudgeCfg(verify="ifeval", reward=rule, **judge)
    return build_pairs([LOWER, PLAIN], responses, scores, raw, jc, {}, found), found


def test_verdicts_and_reward_rules():
    scores = {"a-r0": 1.0, "a-r1": 4.0, "a-r2": 3.0, "b-r0": 2.0, "b-r1": 5.0}
    (pairs, _), found = _build(scores, "verifier_first")
    assert set(found) == {"a-r0", "a-r1", "a-r2"}  # unconstrained prompts are not verified
    assert found["a-r0"]["strict"] == [True] and found["a-r1"]["strict"] == [False]
    by = {p["provenance"]["prompt_id"]: p["provenance"] for p in pairs}
    # the verifier decides against the judge (which prefers the capitalised answer); the judge breaks the tie
    # among passing answers (a-r2 scores 3 > a-r0's 1); the unconstrained prompt is judged as before
    assert (by["a"]["chosen_id"], by["a"]["rejected_id"]) == ("a-r2", "a-r1")
    assert by["a"]["reward"] == {"rule": "verifier_first", "decided_by": "verifier", "chosen_share": 1.0,
                                 "rejected_share": 0.0, "shuffled": False}
    assert (by["b"]["chosen_id"], by["b"]["reward"]["decided_by"]) == ("b-r1", "judge")
    (pairs, _), _ = _build(scores, "judge")
    assert next(p for p in pairs if p["provenance"]["prompt_id"] == "a")["provenance"]["chosen_id"] == "a-r1"
    (pairs, _), _ = _build(scores, "weighted", verifier_weight=0.5)
    a = next(p for p in pairs if p["provenance"]["prompt_id"] == "a")["provenance"]
    # 0.5 * 1 + 0.5 * 3/5 = 0.8 beats 0.5 * 0 + 0.5 * 4/5 = 0.4; worst is a-r1
    assert (a["chosen_id"], a["rejected_id"], a["reward"]["decided_by"]) == ("a-r2", "a-r1", "weighted")
    assert a["reward"]["chosen_reward"] == pytest.approx(0.8)


def test_a_verifier_tie_makes_no_pair_under_verifier_alone():
    scores = {"a-r0": 1.0, "a-r1": 4.0, "a-r2": 3.0, "b-r0": 2.0, "b-r1": 5.0}
    responses = _responses({"a": ["rain.", "more rain.", "rain again."]})
    found = verify.verdicts([LOWER], responses)
    jc = JudgeCfg(verify="ifeval", reward="verifier")
    pairs, dropped = build_pairs([LOWER], responses, scores, {r: [] for r in scores}, jc, {}, found)
    assert pairs == [] and dropped["verifier_tie"] == 1
    jc = JudgeCfg(verify="ifeval", reward="verifier_first")
    pairs, _ = build_pairs([LOWER], responses, scores, {r: [] for r in scores}, jc, {}, found)
    assert pairs[0]["provenance"]["reward"]["decided_by"] == "judge"


def test_shuffled_control_breaks_the_link_and_agreement_counts_pass_fail_pairs():
    responses = _responses({f"q{i}": ["all lowercase here.", "Capital Letters.", "more lowercase."]
                            for i in range(30)})
    prompts = [{**LOWER, "id": f"q{i}"} for i in range(30)]
    found = verify.verdicts(prompts, responses)
    jc = JudgeCfg(verify="ifeval", verify_control="shuffled")
    shuffled = verify.rewarded(found, responses, jc, 0)
    assert shuffled == verify.rewarded(found, responses, jc, 0)
    moved = sum(shuffled[r["id"]]["passed"] != found[r["id"]]["passed"] for r in responses)
    assert 10 < moved < 80 and all(v["shuffled"] for v in shuffled.values())
    assert verify.rewarded(found, responses, JudgeCfg(verify="ifeval"), 0) is found
    # a judge that always prefers the passing answers agrees on every pass/fail pair; one that prefers the
    # failing answer never does; a tie is not agreement
    good = {r["id"]: 5.0 if found[r["id"]]["passed"] else 1.0 for r in responses}
    bad = {r["id"]: 1.0 if found[r["id"]]["passed"] else 5.0 for r in responses}
    flat = {r["id"]: 3.0 for r in responses}
    a = verify.agreement(responses, found, good)
    assert (a["accuracy"], a["n"], a["prompts"]) == (1.0, 60, 30) and a["ci95"][0] > 0.9
    assert verify.agreement(responses, found, bad)["accuracy"] == 0.0
    assert verify.agreement(responses, found, flat)["ties"] == 60
    assert verify.agreement(responses, {}, good) == {"accuracy": None, "ci95": [None, None], "n": 0, "ties": 0,
                                                     "prompts": 0}


def test_bootstrap_mean_interval_and_clusters():
    values = [1.0] * 50 + [0.0] * 50
    lo, hi = bootstrap_mean(values, seed=1)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.04)  # 2 x 1.96 x sqrt(.25 / 100)
    assert bootstrap_mean(values, seed=1) == (lo, hi) and bootstrap_mean([]) == (None, None)
    # the same values in 10 clusters of identical outcomes: only 10 independent draws, a much wider interval
    clusters = [i // 10 for i in range(100)]
    clo, chi = bootstrap_mean(values, seed=1, clusters=clusters)
    assert chi - clo > 2 * (hi - lo)
    assert bootstrap_mean([0.0, 0.0, 0.0], clusters=["a", "a", "b"]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_mean([1.0, 2.0], clusters=["a"])


def test_pair_strategies_compose_with_the_verifier():
    """The verifier picks the groups (most and fewest instructions followed), the strategy picks inside them."""
    responses = _responses({"a": ["the rain falls softly on the roof all night long.", "the rain falls softly.",
                                  "Rain Falls Down Hard.", "Rain."]})
    responses[3]["anchor"] = True  # M0's anchor answer, which fails the instruction
    scores = {"a-r0": 2.0, "a-r1": 2.0, "a-r2": 1.0, "a-r3": 4.0}
    found = verify.verdicts([LOWER], responses)
    raw = {r: [] for r in scores}
    jc = JudgeCfg(verify="ifeval", pair_strategy="length_controlled", length_band=0.5)
    pairs, _ = build_pairs([LOWER], responses, scores, raw, jc, {}, found)
    prov = pairs[0]["provenance"]
    # chosen: the shortest passing answer in the top band; rejected: the failing candidate (anchors not in pool)
    assert (prov["chosen_id"], prov["rejected_id"], prov["reward"]["decided_by"]) == ("a-r1", "a-r2", "verifier")
    jc = JudgeCfg(verify="ifeval", pair_strategy="anchored")
    pairs, _ = build_pairs([LOWER], responses, scores, raw, jc, {}, found)
    prov = pairs[0]["provenance"]
    assert (prov["chosen_id"], prov["rejected_id"]) == ("a-r0", "a-r3")  # rejected from M0's anchors
