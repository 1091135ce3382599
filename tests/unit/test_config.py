import pytest
import yaml

from selfreward import config
from selfreward.config import RecipeError


def load(tmp_path, data, *overrides):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config.load(path, list(overrides))


def test_shipped_recipe_is_valid_and_resolves_paths(recipes_dir):
    cfg = config.load(recipes_dir / "smollm2-135m-cpu.yaml")
    assert cfg.run.iterations == 2
    assert cfg.model.ref == "embedded:smollm2-135m-instruct"
    assert cfg.data_gen.seeds == str(recipes_dir / "seeds" / "instructions.jsonl")
    assert cfg.data_gen.n_responses == 4


def test_overrides_are_typed_and_dotted(tmp_path, recipe_data):
    cfg = load(tmp_path, recipe_data, "train.beta=0.05", "run.iterations=3", "train.dpo_overrides={loss_type: [ipo]}")
    assert cfg.train.beta == 0.05 and cfg.run.iterations == 3
    assert cfg.train.dpo_overrides == {"loss_type": ["ipo"]}


@pytest.mark.parametrize("patch, expected", [
    ({"train": {"betta": 0.1}}, "train.betta: unknown key"),
    ({"judge": {"constitution": "constitutions/missing.md"}}, "judge.constitution: file not found"),
    ({"data_gen": {"seeds": "seeds/nope.jsonl"}}, "data_gen.seeds: file not found"),
    ({"data_gen": {"n_responses": 1}}, "data_gen.n_responses: Input should be greater than or equal to 2"),
    ({"train": {"beta": -0.1}}, "train.beta: Input should be greater than 0"),
    ({"model": {"ref": "/does/not/exist"}}, "model.ref: model path '/does/not/exist' does not exist"),
    ({"model": {"ref": "embedded:gpt-17"}}, "model.ref: unknown embedded model 'gpt-17'"),
    ({"launch": {"mode": "cluster"}}, "launch.mode: Input should be 'inprocess' or 'subprocess'"),
])
def test_bad_recipe_names_file_and_key(tmp_path, recipe_data, patch, expected):
    for section, values in patch.items():
        recipe_data.setdefault(section, {}).update(values)
    with pytest.raises(RecipeError) as e:
        load(tmp_path, recipe_data)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(tmp_path / "r.yaml") + ": ")
    assert expected in msg


def test_empty_seed_file(tmp_path, recipe_data):
    (tmp_path / "seeds" / "instructions.jsonl").write_text("\n")
    with pytest.raises(RecipeError, match=r"data_gen.seeds: .*instructions.jsonl is empty"):
        load(tmp_path, recipe_data)


def test_seed_line_without_instruction(tmp_path, recipe_data):
    (tmp_path / "seeds" / "instructions.jsonl").write_text('{"id": "a", "instruction": "x y z w"}\n{"id": "b"}\n')
    with pytest.raises(RecipeError, match=r"line 2 has no non-empty 'instruction'"):
        load(tmp_path, recipe_data)


def test_constitution_must_be_a_constitution(tmp_path, recipe_data):
    (tmp_path / "constitutions" / "default.md").write_text("Rate this: {response}\n")
    with pytest.raises(RecipeError, match=r"judge.constitution: .*default.md: no front matter"):
        load(tmp_path, recipe_data)


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("run: [unclosed\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_run_yaml_round_trip(tmp_path, recipe_data):
    cfg = load(tmp_path, recipe_data)
    (tmp_path / "run.yaml").write_text(config.dump(cfg))
    assert config.from_run_yaml(tmp_path / "run.yaml") == cfg


def test_model_dir_relative_to_recipe_and_offline_hub_id(tmp_path, recipe_data, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "mymodel" / "config.json").write_text("{}")
    (tmp_path / "mymodel" / "chat_template.jinja").write_text("{{ messages }}")  # a model must have one
    recipe_data["model"] = {"ref": "mymodel"}
    assert load(tmp_path, recipe_data).model.ref == str(tmp_path / "mymodel")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe_data["model"] = {"ref": "models/typo"}
    with pytest.raises(RecipeError, match=r"model.ref: 'models/typo' is not a local directory, and HF_HUB_OFFLINE"):
        load(tmp_path, recipe_data)


def test_seed_ids_must_be_unique(tmp_path, recipe_data):
    (tmp_path / "seeds" / "instructions.jsonl").write_text(
        '{"id": "a", "instruction": "x y z w"}\n{"id": "a", "instruction": "u v w x"}\n')
    with pytest.raises(RecipeError, match=r"line 2 repeats the id 'a'"):
        load(tmp_path, recipe_data)


def test_token_budgets_must_fit_the_context_only_for_sections_that_run(tmp_path, recipe_data):
    """sft.max_length (1024 by default) constrains model.max_model_len only when the SFT bootstrap runs."""
    cfg = load(tmp_path, recipe_data, "model.max_model_len=512", "train.max_length=256")
    assert not cfg.sft.enabled and cfg.sft.max_length >= 512
    with pytest.raises(config.RecipeError, match=r"train\.max_length: 600 tokens do not fit in model\.max_model_len=512"):
        load(tmp_path, recipe_data, "model.max_model_len=512", "train.max_length=600")
