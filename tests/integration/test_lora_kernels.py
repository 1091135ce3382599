"""selfreward's grouped CPU LoRA kernels in the configurations recipes use: LoRA on every target module the
recipes train (q, k, v, o, gate, up, down), in each dtype the engine may pick on a CPU (bfloat16 where the CPU
computes it natively, float32 elsewhere), against transformers + PEFT.

Compared: per-token log-probabilities of fixed completions (teacher forcing), base and adapter rows in one
batch. Tolerance per dtype: float32 must agree with transformers float32 to 1e-4; bfloat16 rounds every
product, so vLLM bf16 must be no further from the float32 reference than transformers' own bf16 is, with a
margin of 2x plus 0.02 (different kernels round differently; neither is the exact answer). The engine runs
with the C++ RMSNorm and rotary kernels of `selfreward.vllm_cpu_ops`, so the same comparison covers them.
"""
import pytest

from selfreward import vllm_cpu_ops
from selfreward.config import ModelCfg
from selfreward.engine import HFEngine, ScoreRequest, VLLMEngine

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MSGS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three, please."}]]
COMPLETIONS = ["Blue, like the sky on a clear day.", "One, two, three. Done!"]


def _adapter(tiny_model_dir, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=MODULES, init_lora_weights=False))
    lora.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapter_all(tiny_model_dir, tmp_path_factory):
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-all"), 3)


@pytest.fixture(scope="module")
def more_adapters(tiny_model_dir, tmp_path_factory):
    return [_adapter(tiny_model_dir, tmp_path_factory.mktemp(f"adapter-{seed}"), seed) for seed in (4, 5)]


def _merged_slots(engine) -> list[int]:
    """The adapter slots whose merged weights the engine's LoRA linear layers hold now."""
    [slots] = engine.llm.apply_model(lambda model: [m.selfreward_merged[0] for m in model.modules()
                                                    if m.__dict__.get("selfreward_merged", (0, None))[1] is not None])
    return slots


def _requests(adapter):
    return [ScoreRequest(m, c, a) for a in (None, adapter) for m, c in zip(MSGS, COMPLETIONS)]


def _max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.fixture(scope="module")
def reference(tiny_model_dir, adapter_all):
    return HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32")).score(_requests(adapter_all))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_kernels_and_merged_weights_match_transformers_peft(dtype, tiny_model_dir, adapter_all, more_adapters,
                                                                 reference):
    reqs = _requests(adapter_all)
    engine = VLLMEngine(str(tiny_model_dir), ModelCfg(dtype=dtype, max_model_len=512, kv_cache_gib=1), 16)
    try:
        from vllm import ir

        assert ir.ops.rms_norm.get_priority()[0] == vllm_cpu_ops.PROVIDER
        assert "+rotary_embedding" in engine.llm.llm_engine.vllm_config.compilation_config.custom_ops
        got = engine.score(reqs)  # base and adapter rows in one batch: the grouped kernels
        assert _merged_slots(engine) == []
        alone = engine.score(reqs[2:])  # the adapter's rows alone: merged weights in all 8 LoRA layers
        slots = _merged_slots(engine)
        again = engine.score(reqs)
        # with 2 slots, a third adapter evicts the least recently used one (the first) and takes its slot:
        # that slot's merged weights must be rebuilt, not reused
        second, third = [engine.score(_requests(a)) for a in more_adapters]
        third_alone = engine.score(_requests(more_adapters[1])[2:])
        third_slots = _merged_slots(engine)
    finally:
        del engine
    assert len(slots) == 2 * 4 and len(set(slots)) == 1 and third_slots == slots
    assert again == got  # merged weights do not leak into mixed batches
    assert _max_diff(second[2:], got[2:]) > 0.5 and _max_diff(third_alone, alone) > 0.5
    # the adapter matters far beyond the tolerance, so a dropped adapter cannot pass
    assert _max_diff(reference[:2], reference[2:]) > 0.5
    if dtype == "float32":
        assert _max_diff(got, reference) < 1e-4
        assert _max_diff(alone, got[2:]) < 1e-4 and _max_diff(third_alone, third[2:]) < 1e-4
    else:
        hf_bf16 = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="bfloat16")).score(reqs)
        bound = 2 * _max_diff(hf_bf16, reference) + 0.02
        assert _max_diff(got, reference) <= bound and _max_diff(alone, reference[2:]) <= bound
        assert _max_diff(third_alone, third[2:]) <= 2 * bound
