"""Proof that the gate works, on the embedded SmolLM2 through the real loop: an unchanged candidate is refused
for lack of evidence and the next iteration starts from the last promoted model; a human decides under manual
oversight; zero pairs and a NaN loss end an iteration without promotion; a candidate trained on degenerate
pairs is refused for collapse."""
import shutil

import pytest
import yaml

from selfreward import artifacts, config, exits, lifecycle, loop
from selfreward.records import read_json, read_jsonl, write_json, write_jsonl

# logprob judging: continuous scores, so three responses practically never tie and every iteration has pairs
SMALL = {
    "data_gen": {"num_prompts": 4, "prompts_per_round": 16, "n_responses": 3, "max_tokens": 48},
    "judge": {"mode": "logprob", "allow_truncated": True, "known_answer_pairs": 4},
    "train": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 192},
    "eval": {"max_tokens": 48, "capability_max_tokens": 32, "shard_size": 16},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory, recipes_dir):
    tmp = tmp_path_factory.mktemp("gate")
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()
    (tmp / "probes.jsonl").write_text("\n".join(probes[:8]) + "\n")
    ifeval = (recipes_dir / "probes" / "ifeval.jsonl").read_text().splitlines()
    (tmp / "ifeval.jsonl").write_text("\n".join(ifeval[:12]) + "\n")
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["run"] = {"name": "same", "output_dir": str(tmp / "runs"), "iterations": 2}
    data["eval"].update(probes=str(tmp / "probes.jsonl"), capability_probes=str(tmp / "ifeval.jsonl"))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _load(recipe, *overrides):
    return config.load(recipe, list(overrides))


@pytest.fixture(scope="module")
def unchanged_run(small):
    # a learning rate of 1e-12 leaves the LoRA adapter at (numerically) zero: the candidate equals its parent
    cfg = _load(small, "train.learning_rate=1e-12")
    return loop.run(cfg), cfg


def test_unchanged_candidate_is_refused_and_the_next_iteration_starts_from_the_promoted_model(unchanged_run):
    run_dir, _ = unchanged_run
    for k in (1, 2):
        decision = read_json(run_dir / f"iter_00{k}/eval/decision.json")
        assert not decision["passed"]
        assert decision["reasons"][0].startswith("no evidence of improvement"), decision["reasons"]
        win = next(i for i in decision["improvement"] if i["metric"] == "win_rate")
        assert win["value"] == pytest.approx(0.5, abs=1e-6) and win["ci95"][0] <= 0.5
        cap = next(i for i in decision["improvement"] if i["metric"] == "capability")
        assert cap["value"] == 0 and cap["ci95"] == [0.0, 0.0]
        assert read_json(run_dir / f"iter_00{k}/outcome.json")["promoted"] is False
    state = read_json(run_dir / "state.json")
    assert state["promoted_iteration"] == 0 and state["adapter"] is None
    assert read_json(run_dir / "iter_002/lineage.json") == {"iteration": 2, "parent_iteration": 0,
                                                            "parent_adapter": None}
    # iteration 2 was compared with M0's outputs, and generated with M0 (no adapter in its provenance)
    assert read_json(run_dir / "iter_002/eval/decision.json")["previous_iteration"] == 0
    assert all(p["provenance"]["generator"] == "embedded:smollm2-135m-instruct"
               for p in read_jsonl(run_dir / "iter_002/judge/pairs.jsonl"))


def test_manual_oversight_waits_for_a_human(unchanged_run, small, cli):
    run_dir, _ = unchanged_run
    out = cli("approve", run_dir, "--iteration", "1", "--reason", "looks fine")
    assert out.returncode == 2 and "iteration 1 is already decided (not promoted)" in out.stderr
    out = cli("approve", run_dir, "--iteration", "7", "--reason", "x")
    assert out.returncode == 2 and "iteration 7 has not reached its gate" in out.stderr
    before = (run_dir / "state.json").read_text()
    cfg = _load(small, "train.learning_rate=1e-12", "run.oversight=manual", "run.iterations=3")
    loop.run(cfg)  # iteration 3 stops after its gate
    assert (run_dir / "iter_003/review.json").exists() and not (run_dir / "iter_003/outcome.json").exists()
    assert (run_dir / "state.json").read_text() == before
    out = cli("approve", run_dir, "--iteration", "3", "--reason", "ship it")  # the gate refused it
    assert out.returncode == 2 and "was refused by the gate" in out.stderr and "cannot be approved" in out.stderr
    out = cli("reject", run_dir, "--iteration", "3", "--reason", "no better than M0", "--by", "alice")
    assert out.returncode == 0, out.stderr
    state = read_json(run_dir / "state.json")
    last = state["history"][-1]
    assert last["iteration"] == 3 and last["decision"] == "rejected" and last["decided_by"] == "alice"
    assert last["reason"] == "no better than M0" and last["decided_at"] and state["promoted_iteration"] == 0
    out = cli("reject", run_dir, "--iteration", "3", "--reason", "again")
    assert out.returncode == 2 and "already decided" in out.stderr


def test_zero_pairs_end_the_iteration_and_say_why(unchanged_run, small):
    run_dir, _ = unchanged_run
    cfg = _load(small, "run.name=nopairs", "run.iterations=1", "judge.min_margin=6")  # no margin can reach 6
    shutil.copytree(run_dir / "iter_000", cfg.run_dir() / "iter_000")  # M0's baseline, same config
    loop.run(cfg)
    outcome = read_json(cfg.run_dir() / "iter_001/outcome.json")
    assert outcome["promoted"] is False and "zero usable pairs" in outcome["reasons"][0]
    assert read_json(cfg.run_dir() / "iter_001/judge/stats.json")["dropped"]["below_margin"] >= 1
    assert not (cfg.run_dir() / "iter_001/train/adapter").exists()
    assert read_json(cfg.run_dir() / "state.json")["promoted_iteration"] == 0


def _degenerate_pairs(prompts, n=16):
    # about 90 tokens of repeated words: one epoch on 16 such pairs at a high learning rate makes the model ramble
    # (measured on an Intel Xeon with AMX, bf16: repetition rise 0.71 against a bound of 0.1, distinct-2 ratio 0.20
    # against 0.8); 8 pairs do not
    ramble = " ".join(["the the same same words words again again"] * 10)
    return [{"prompt": [{"role": "user", "content": prompts[i % len(prompts)]["instruction"]}],
             "chosen": [{"role": "assistant", "content": ramble}],
             "rejected": [{"role": "assistant", "content": "A short, clear and correct answer."}],
             "provenance": {"prompt_id": f"d{i}"}} for i in range(n)]


def test_candidate_trained_on_degenerate_pairs_is_refused_for_collapse(unchanged_run, small):
    run_dir, _ = unchanged_run
    cfg = _load(small, "run.name=degenerate", "run.iterations=1", "train.learning_rate=3e-3")
    new = cfg.run_dir()
    loop.prepare_run_dir(cfg, force=False)
    for part in ("iter_000", "iter_001/lineage.json", "iter_001/data_gen", "iter_001/judge"):
        src, dst = run_dir / part, new / part  # M0's real outputs from the unchanged run
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    it = artifacts.iteration_dir(new, 1)
    write_jsonl(it / "judge" / "pairs.jsonl", _degenerate_pairs(read_jsonl(it / "data_gen" / "prompts.jsonl")))
    from selfreward.eval import stage as evaluation
    from selfreward.train import stage as train

    write_json(it / "judge" / "manifest.json", {**read_json(it / "judge" / "manifest.json"), "config_hash": "degenerate"})
    lifecycle.execute(train.STAGE, cfg, it)
    lifecycle.execute(evaluation.STAGE, cfg, it)
    decision = read_json(it / "eval" / "decision.json")
    assert not decision["passed"]
    by_metric = {g["metric"]: g for g in decision["guards"]}
    # a model that learnt to ramble the same words: the within-response repetition and distinct-2 guards must
    # fire, each on a measured value beyond its bound (an unmeasured guard also fails; that would not count)
    rep, d2 = by_metric["repetition_rise"], by_metric["distinct2_ratio"]
    assert rep["value"] is not None and rep["value"] > rep["bound"] and not rep["passed"], rep
    assert d2["value"] is not None and d2["value"] < d2["bound"] and not d2["passed"], d2
    assert rep["reason"] in decision["reasons"] and d2["reason"] in decision["reasons"]
    assert all(g["value"] is not None for g in decision["guards"] if not g["passed"]), decision["reasons"]


def test_nan_loss_ends_training_without_an_adapter(tiny_model_dir, tmp_path, write_recipe, make_pairs, capsys):
    """A NaN loss ends the iteration through the loop: no adapter, outcome.json says why, state.json unmoved."""
    from selfreward.data_gen import stage as data_gen
    from selfreward.judge import stage as judge
    from selfreward.tracking import Tracker

    data = {"run": {"name": "nan", "output_dir": str(tmp_path / "runs")}, "model": {"ref": str(tiny_model_dir)},
            "train": {"per_device_train_batch_size": 2, "learning_rate": 1e30, "lora_r": 8, "max_length": 128}}
    cfg = config.load(write_recipe(tmp_path / "r.yaml", data))
    run_dir = loop.prepare_run_dir(cfg, force=False)
    it = artifacts.iteration_dir(run_dir, 1)
    write_json(it / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    pairs = make_pairs(8)
    prompts = [{"id": f"p{i}", "instruction": p["prompt"][0]["content"]} for i, p in enumerate(pairs)]
    write_jsonl(it / "data_gen" / "prompts.jsonl", prompts)
    write_jsonl(it / "judge" / "pairs.jsonl", pairs)
    gen = {"prompts_accepted": 8, "prompts_candidates": 8, "prompts_acceptance_rate": 1.0, "responses": 16,
           "response_tokens_mean": 6.0, "truncated_rate": 0.0, "dtype": "float32"}
    judged = {"mode": "logprob", "dtype": "float32", "valid": 16, "judgments": 16, "valid_rate": 1.0, "score_mean": 3.0,
              "pairs": 8, "prompts": 8, "dropped": {}, "known_answer": {"accuracy": None, "n": 0},
              "consistency": {"kendall_tau": None}}
    for stage, name, metrics in ((data_gen.STAGE, "prompts.jsonl", gen), (judge.STAGE, "pairs.jsonl", judged)):
        artifacts.write_manifest(it / stage.name, stage.name, lifecycle.identity(stage, cfg, it),  # done, for the loop
                                 {name.split(".")[0]: it / stage.name / name}, metrics, 0.0)
    before = read_json(run_dir / "state.json")

    assert loop.run_iteration(cfg, run_dir, 1, False, Tracker(cfg, run_dir)) == "ended"
    assert "[iter 1] train: DPO loss became non-finite at step" in capsys.readouterr().out
    outcome = read_json(it / "outcome.json")
    assert outcome["promoted"] is False and "DPO loss became non-finite at step" in outcome["reasons"][0]
    assert read_json(it / "train" / "error.json")["exit_code"] == exits.EXIT_ITERATION_ENDED
    assert not (it / "train" / "adapter").exists() and not (it / "train" / "manifest.json").exists()
    assert not (it / "eval").exists()  # the iteration ended at train: nothing was evaluated
    state = read_json(run_dir / "state.json")  # the promoted pointer did not move; the history says why
    assert (state["promoted_iteration"], state["adapter"]) == (before["promoted_iteration"], before["adapter"]) == (0, None)
    assert state["history"] == [{"iteration": 1, "promoted": False, "reasons": outcome["reasons"]}]
