"""Adapters that travel: a trained adapter names its base by the recipe's model reference, not by a path in
this user's cache, so a copy of it loads with plain peft (and with selfreward's loader) after the base model
or the cache has moved, and computes exactly what the original did."""
import json
import os
import shutil

import pytest
import torch

from selfreward import artifacts, config, models
from selfreward.records import write_json, write_jsonl

IDS = torch.tensor([[1, 42, 7, 99, 3, 250, 11]])


def _train(tmp_path, ref, write_recipe, pairs, **train):
    data = {"run": {"name": "p", "output_dir": str(tmp_path / "runs")}, "model": {"ref": ref},
            "train": {"per_device_train_batch_size": 2, "num_train_epochs": 1, "learning_rate": 5e-2, "lora_r": 4,
                      "max_length": 64, "save_steps": 100, "precision": "fp32", **train}}
    cfg = config.load(write_recipe(tmp_path / "r.yaml", data))
    iter_dir = artifacts.iteration_dir(cfg.run_dir(), 1)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", pairs)
    from selfreward.train.dpo import fit

    fit(cfg, iter_dir)
    return cfg, iter_dir / "train" / "adapter"


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def _plain_peft(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))


def test_adapter_copy_loads_after_the_model_directory_moves(tmp_path, tiny_model_dir, write_recipe, make_pairs):
    model_dir = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg, adapter = _train(tmp_path, str(model_dir), write_recipe, make_pairs(4))
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == cfg.model.ref == str(model_dir)
    trained = _plain_peft(model_dir, adapter)
    original = _logits(trained)
    with trained.disable_adapter():
        assert not torch.allclose(original, _logits(trained))  # training moved the adapter away from zero

    copy = tmp_path / "elsewhere" / "my-adapter"
    shutil.copytree(adapter, copy)
    moved = tmp_path / "moved" / "tiny-renamed"
    moved.parent.mkdir()
    os.rename(model_dir, moved)
    assert torch.equal(_logits(_plain_peft(moved, copy)), original)
    assert torch.equal(_logits(models.load_adapter(copy, base=str(moved))), original)
    # the recorded reference no longer resolves: one clear error, not a traceback from deep inside peft
    with pytest.raises(models.ModelRefError, match="does not exist"):
        models.load_adapter(copy)


def test_embedded_adapter_loads_after_the_cache_moves(tmp_path, smol_dir, write_recipe, make_pairs, monkeypatch):
    # a cache of our own, hard-linked from the converted model (no second conversion), that we can move
    cache = tmp_path / "cache-a"
    (cache / "models" / smol_dir.name).mkdir(parents=True)
    for f in smol_dir.iterdir():
        os.link(f, cache / "models" / smol_dir.name / f.name)
    monkeypatch.setenv("SELFREWARD_CACHE", str(cache))
    ref = "embedded:smollm2-135m-instruct"
    _, adapter = _train(tmp_path, ref, write_recipe, make_pairs(2), lora_target_modules=["q_proj", "v_proj"])
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == ref
    original = _logits(models.load_adapter(adapter))

    copy = tmp_path / "shared" / "adapter"
    shutil.copytree(adapter, copy)
    os.rename(cache, tmp_path / "cache-b")
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache-b"))
    assert torch.equal(_logits(models.load_adapter(copy)), original)  # the recorded ref, resolved anew
    new_base = tmp_path / "cache-b" / "models" / smol_dir.name
    assert torch.equal(_logits(_plain_peft(new_base, copy)), original)


def test_engines_refuse_an_adapter_of_another_base(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(other), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    models.check_adapter_base(tmp_path / "adapter", str(other))
    with pytest.raises(models.ModelRefError, match="was trained on"):
        models.check_adapter_base(tmp_path / "adapter", str(tiny_model_dir))
