"""Real TRL DPOTrainer with LoRA on a tiny random Llama: adapters change, the base does not, lineage holds."""
import math

import pytest
from safetensors.torch import load_file

from selfreward import artifacts, config
from selfreward.records import write_json, write_jsonl


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, tmp_path_factory, write_recipe):
    tmp = tmp_path_factory.mktemp("dpo")
    data = {"run": {"name": "dpo", "output_dir": str(tmp / "runs")}, "model": {"ref": str(tiny_model_dir)},
            "train": {"per_device_train_batch_size": 4, "num_train_epochs": 2, "learning_rate": 5e-3, "lora_r": 8, "max_length": 128,
                      "save_steps": 2}}
    return config.load(write_recipe(tmp / "r.yaml", data))


def _iteration(cfg, k, parent, pairs):
    iter_dir = artifacts.iteration_dir(cfg.run_dir(), k)
    write_json(iter_dir / "lineage.json", {"iteration": k, "parent_iteration": k - 1, "parent_adapter": parent})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", pairs)
    return iter_dir


def _assert_base_untouched(trainer, base_file):
    base = load_file(base_file)
    params = dict(trainer.accelerator.unwrap_model(trainer.model).get_base_model().named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    assert all(str(params[n].dtype) == "torch.float32" for n in trainable)  # LoRA weights train in fp32
    for name, p in params.items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            # frozen base weights are loaded in bf16 where the CPU computes bf16 natively: equal to the cast file
            assert p.detach().equal(base[key].to(p.dtype)), key


def test_dpo_lineage(cfg, tiny_model_dir, make_pairs):
    from selfreward.train.dpo import fit

    it1 = _iteration(cfg, 1, None, make_pairs())
    trainer, m1 = fit(cfg, it1)
    _assert_base_untouched(trainer, tiny_model_dir / "model.safetensors")
    a1 = load_file(it1 / "train" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in a1.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # PEFT initialises B to zero: training moved it
    assert m1["steps"] == 4 and m1["pairs"] == 8
    assert m1["loss_first"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 0
    assert m1["loss_last"] < m1["loss_first"]
    assert m1["reference"].startswith("M0")
    # checkpoints for resume were written under train/checkpoints
    assert any(p.name.startswith("checkpoint-") for p in (it1 / "train" / "checkpoints").iterdir())

    it2 = _iteration(cfg, 2, artifacts.adapter_path(1), make_pairs())
    trainer, m2 = fit(cfg, it2)
    _assert_base_untouched(trainer, tiny_model_dir / "model.safetensors")
    # iteration 2 starts from adapter 1 and its reference is M1: DPO loss starts at log 2 again
    assert m2["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    assert m2["reference"].endswith("iter_001/train/adapter")
    a2 = load_file(it2 / "train" / "adapter" / "adapter_model.safetensors")
    assert set(a2) == set(a1)  # only the trained adapter is saved, not TRL's frozen "ref" copy
    assert any(not a2[k].equal(a1[k]) for k in a1)


def test_dpo_torch_compile_compiles_each_decoder_layer(tiny_model_dir, tmp_path, write_recipe, make_pairs):
    """`dpo_overrides: {torch_compile: true}` trains through compiled decoder layers (regional compilation: one
    compile shared by every layer) to the same losses as eager training, and saves the same adapter keys."""
    import torch

    from selfreward.train.dpo import fit

    def run(name, overrides):
        data = {"run": {"name": name, "output_dir": str(tmp_path / "runs")}, "model": {"ref": str(tiny_model_dir)},
                "train": {"per_device_train_batch_size": 4, "learning_rate": 5e-3, "lora_r": 8, "lora_dropout": 0.0,
                          "max_length": 128, "precision": "fp32", "dpo_overrides": overrides}}
        c = config.load(write_recipe(tmp_path / f"{name}.yaml", data))
        trainer, summary = fit(c, _iteration(c, 1, None, make_pairs(8)))
        adapter = load_file(artifacts.iteration_dir(c.run_dir(), 1) / "train" / "adapter" / "adapter_model.safetensors")
        return trainer, [h for h in trainer.state.log_history if "loss" in h], adapter

    def compiled_layers(trainer):
        layers = trainer.model_wrapped.get_base_model().model.layers
        assert len(layers) == 2
        return [isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in layers]

    trainer, eager, eager_adapter = run("eager", {})
    assert compiled_layers(trainer) == [False, False]
    trainer, compiled, compiled_adapter = run("compiled", {"torch_compile": True})
    assert compiled_layers(trainer) == [True, True]
    # accelerate keeps one state per process: a later run without torch_compile is not compiled
    assert compiled_layers(run("eager-again", {})[0]) == [False, False]
    # the same training, step by step: losses (the second one after an update) and gradient norms. Both runs are
    # float32 (train.precision: fp32), where a fused kernel may only reorder sums: the bound is float32 rounding
    # accumulated over about a thousand terms, not a value tuned on one CPU (under bf16 autocast, which a CPU
    # with AVX512-BF16 picks by default, the two differed by 2.8e-3 on one machine: bf16's own rounding, 2^-8).
    # The adapters themselves are not compared value by value: Adam's first step moves each weight by about +-lr
    # whatever the gradient's size, so rounding-level differences in near-zero gradients flip single weights
    tol = 1000 * torch.finfo(torch.float32).eps
    assert len(compiled) == len(eager) == 2 and eager[1]["loss"] < eager[0]["loss"] - 0.05
    for c, e in zip(compiled, eager):
        assert c["loss"] == pytest.approx(e["loss"], rel=tol)
        assert c["grad_norm"] == pytest.approx(e["grad_norm"], rel=tol)
    assert set(compiled_adapter) == set(eager_adapter)
