"""The paper's M1: the SFT bootstrap (TRL SFTTrainer + LoRA on instruction-following and judge examples) runs
before iteration 1 in iter_000/sft, its adapter becomes the loop's M0 (state.json, iteration 1's lineage, the
base DPO continues), a rerun skips it, and bad SFT data is refused by `selfreward validate` in one line."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from selfreward import config, constitution, judging, lifecycle, loop
from selfreward.exits import StageConflict
from selfreward.records import read_json, read_jsonl

IFT = [("Name a primary colour.", "Red is a primary colour."),
       ("What is the capital of France?", "The capital of France is Paris."),
       ("Give me a synonym for happy.", "A synonym for happy is cheerful."),
       ("How many legs does a spider have?", "A spider has eight legs."),
       ("What do bees make?", "Bees make honey and wax."),
       ("Spell the word cat backwards.", "Backwards, cat is spelled t-a-c."),
       ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
       ("Name an animal that can fly.", "An eagle is an animal that can fly.")]
EFT = [("What is two plus two?", "Four.", "Score: 5\nCorrect, direct and complete."),
       ("What is two plus two?", "Bananas are yellow.", "Score: 0\nThe reply ignores the question."),
       ("Name a planet.", "Mars is a planet.", "Score: 5\nA correct, relevant answer."),
       ("Name a planet.", "I like soup.", "Score: 0\nOff topic."),
       ("Say hello in French.", "Bonjour.", "Score: 4\nCorrect but very short."),
       ("Say hello in French.", "Hello.", "Score: 1\nNot French.")]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model_dir, recipes_dir, write_recipe):
    tmp = tmp_path_factory.mktemp("sft")
    (tmp / "ift.jsonl").write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in IFT))
    pq.write_table(pa.table({"q": [r[0] for r in EFT], "a": [r[1] for r in EFT], "verdict": [r[2] for r in EFT]}),
                   tmp / "eft.parquet")
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()
    (tmp / "probes.jsonl").write_text("\n".join(probes[:3]) + "\n")
    ifeval = (recipes_dir / "probes" / "ifeval.jsonl").read_text().splitlines()
    (tmp / "ifeval.jsonl").write_text("\n".join(ifeval[:3]) + "\n")
    data = {"run": {"name": "sft", "output_dir": str(tmp / "runs"), "iterations": 1},
            "model": {"ref": str(tiny_model_dir), "engine": "hf"},
            "data_gen": {"source": "dataset", "dataset": {"path": "ift.jsonl", "prompt_column": "instruction"},
                         "num_prompts": 3, "n_responses": 2, "max_tokens": 12},
            "judge": {"mode": "logprob", "allow_truncated": True, "known_answer_pairs": 2,
                      "min_score_mass": 1e-6},  # a random tiny model spreads its mass over the vocabulary
            "train": {"per_device_train_batch_size": 2, "max_length": 128, "lora_r": 8},
            "sft": {"enabled": True,
                    "ift": {"path": "ift.jsonl", "prompt_column": "instruction", "completion_column": "output"},
                    "eft": {"path": "eft.parquet", "instruction_column": "q", "response_column": "a",
                            "judgment_column": "verdict"},
                    "learning_rate": 5e-3, "num_train_epochs": 3, "per_device_train_batch_size": 4,
                    "max_length": 384},
            "eval": {"probes": "probes.jsonl", "capability_probes": "ifeval.jsonl", "max_tokens": 12,
                     "capability_max_tokens": 12, "judge_max_tokens": 2}}
    return write_recipe(tmp / "recipe.yaml", data)


@pytest.fixture(scope="module")
def run_dir(recipe):
    cfg = config.load(recipe)
    loop.check_recipe(cfg, str(recipe))
    return loop.run(cfg)


def test_sft_trains_an_adapter_on_ift_and_eft_examples(run_dir, recipe):
    sft = run_dir / "iter_000" / "sft"
    manifest = read_json(sft / "manifest.json")
    m = manifest["metrics"]
    assert (m["ift_examples"], m["eft_examples"]) == (len(IFT), len(EFT))
    assert m["steps"] == 12 and m["loss_last"] < m["loss_first"]  # 14 examples / 4 per step, 3 epochs
    losses = [h["loss"] for h in read_jsonl(sft / "log_history.jsonl")]
    assert len(losses) == 12 and losses[-1] < losses[0]
    weights = load_file(sft / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # PEFT initialises B to zero: training moved it
    assert json.loads((sft / "adapter" / "adapter_config.json").read_text())["r"] == 8  # train.lora_r: DPO continues it

    # EFT rows are the judge prompt the judge stage renders (logprob mode: score first) with the target judgment
    cfg = config.load(recipe)
    con = constitution.load(cfg.judge.constitution)
    rows = read_jsonl(sft / "train.jsonl")
    eft = [r for r in rows if r["kind"] == "eft"]
    assert [r["completion"][0]["content"] for r in eft] == [v for _, _, v in EFT]
    assert eft[1]["prompt"][0]["content"] == judging.render(con, con.units()[0][1], EFT[1][0], EFT[1][1],
                                                            "score_first")
    assert [r["prompt"][0]["content"] for r in rows if r["kind"] == "ift"] == [q for q, _ in IFT]


def test_iteration_1_starts_from_the_sft_adapter(run_dir):
    state = read_json(run_dir / "state.json")
    assert state["m0"]["adapter"] == "iter_000/sft/adapter"
    sft_hash = read_json(run_dir / "iter_000" / "sft" / "manifest.json")["config_hash"]
    assert state["m0"]["sft_config_hash"] == sft_hash
    assert read_json(run_dir / "iter_001" / "lineage.json") == {"iteration": 1, "parent_iteration": 0,
                                                                "parent_adapter": "iter_000/sft/adapter"}
    train = read_json(run_dir / "iter_001" / "train" / "manifest.json")
    assert train["metrics"]["reference"] == str((run_dir / "iter_000" / "sft" / "adapter").resolve())
    assert train["config"]["lineage"]["parent_sft_hash"] == sft_hash
    pairs = read_jsonl(run_dir / "iter_001" / "judge" / "pairs.jsonl")
    assert pairs and all(p["provenance"]["generator"].endswith("+iter_000/sft/adapter") for p in pairs)
    # DPO continued the SFT adapter: same LoRA shape, other weights
    sft_w = load_file(run_dir / "iter_000" / "sft" / "adapter" / "adapter_model.safetensors")
    dpo_w = load_file(run_dir / "iter_001" / "train" / "adapter" / "adapter_model.safetensors")
    assert sft_w.keys() == dpo_w.keys() and any(not sft_w[k].equal(dpo_w[k]) for k in sft_w)
    # M0's baseline is the SFT model's, and a refused iteration 1 leaves M0 (base + SFT adapter) promoted
    assert read_json(run_dir / "iter_000" / "eval" / "manifest.json")["config"]["m0_sft_hash"] == sft_hash
    if state["promoted_iteration"] == 0:
        assert state["adapter"] == "iter_000/sft/adapter"


def test_a_rerun_skips_the_sft_stage_and_a_changed_one_conflicts(run_dir, recipe):
    from selfreward.train import sft

    iter_dir = run_dir / "iter_000"
    before = read_json(iter_dir / "sft" / "manifest.json")
    assert lifecycle.execute(sft.STAGE, config.load(recipe), iter_dir) == before
    with pytest.raises(StageConflict, match=r"changed: sft\.learning_rate\)"):
        lifecycle.execute(sft.STAGE, config.load(recipe, ["sft.learning_rate=0.001"]), iter_dir)
    (recipe.parent / "edited.jsonl").write_text((recipe.parent / "ift.jsonl").read_text().replace("Red", "Blue"))
    with pytest.raises(StageConflict, match=r"changed: sft\.ift\.path\)"):  # the data by content
        lifecycle.execute(sft.STAGE, config.load(recipe, [f"sft.ift.path={recipe.parent / 'edited.jsonl'}"]),
                          iter_dir)
    assert read_json(iter_dir / "sft" / "manifest.json") == before


def test_bad_sft_data_is_refused_at_validate_in_one_line(recipe, cli):
    tmp = recipe.parent
    (tmp / "reason.jsonl").write_text(json.dumps({"instruction": "Hi", "response": "Hello", "judgment": "Good."}) + "\n")
    cases = [(["sft.ift.completion_column=answer"], "sft: ", "no column 'answer' (mapped as the completion column)"),
             (["sft.eft.path=reason.jsonl", "sft.eft.instruction_column=instruction", "sft.eft.response_column=response",
               "sft.eft.judgment_column=judgment"], "sft: ", "row 0: the judgment must start with `Score: N`"),
             (["sft.eft.path=someone/judge-data"], "sft: ", "cannot be fetched offline"),
             (["sft.enabled=true", "sft.ift=null", "sft.eft=null"], "sft: ", "enabled needs ift or eft data")]
    for overrides, key, message in cases:
        out = cli("validate", recipe, *overrides)
        lines = [line for line in out.stderr.splitlines() if line.startswith("selfreward")]
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"{recipe}: {key}" in lines[0] and message in lines[0], lines
