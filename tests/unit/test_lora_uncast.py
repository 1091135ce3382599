"""Under bf16 autocast the train stage lets LoRA modules take their bf16 inputs as they are (train/dpo.py).

PEFT casts each LoRA module's input to the fp32 adapter dtype, and autocast casts it straight back to bf16 for
the matmul. Skipping that round trip must change nothing but the copies: the same outputs and gradients, bit for
bit, with fewer activation-sized casts; and fp32 training (no autocast) keeps PEFT's cast, which it needs."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _CountCasts(TorchDispatchMode):
    """Counts dtype casts of tensors at least `min_numel` large (activations, not weights)."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel, self.casts = min_numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].numel() >= self.min_numel \
                and kwargs.get("dtype", args[0].dtype) != args[0].dtype:
            self.casts += 1
        return func(*args, **kwargs)


def _lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"]))
    for name, p in model.named_parameters():  # B starts at zero in PEFT: give the adapter a real delta
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def _step(model, ids):
    """Loss, logits and every LoRA gradient of one forward/backward under CPU bf16 autocast, and its casts."""
    model.zero_grad()
    with _CountCasts(min_numel=ids.numel() * model.config.hidden_size) as counter, \
            torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach(), grads, counter.casts


def test_uncast_lora_inputs_change_only_the_copies(tiny_model_dir):
    from selfreward.train.dpo import _lora_inputs_uncast

    model = _lora_model(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(1))
    loss0, logits0, grads0, casts0 = _step(model, ids)
    with _lora_inputs_uncast(SimpleNamespace(args=SimpleNamespace(bf16=True), is_deepspeed_enabled=False,
                                             model=model)):
        loss1, logits1, grads1, casts1 = _step(model, ids)

    assert loss1.equal(loss0) and logits1.equal(logits0)
    assert grads1.keys() == grads0.keys() and len(grads0) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    assert all(grads1[n].equal(grads0[n]) for n in grads0)
    # PEFT's cast to fp32, autocast's back to bf16, and both in backward, for each of 14 modules
    assert casts0 - casts1 >= 2 * 14, (casts0, casts1)


@pytest.mark.parametrize("bf16,deepspeed", [(False, False), (True, True)])
def test_fp32_training_and_deepspeed_keep_peft_casting(tiny_model_dir, bf16, deepspeed):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from selfreward.train.dpo import _lora_inputs_uncast

    model = _lora_model(tiny_model_dir)
    with _lora_inputs_uncast(SimpleNamespace(args=SimpleNamespace(bf16=bf16), is_deepspeed_enabled=deepspeed,
                                             model=model)):
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert len(layers) == 14 and all(m.cast_input_dtype_enabled for m in layers)
