"""Real vLLM (CPU build) and transformers engines on a tiny random Llama, with and without a LoRA adapter."""
import pytest

from selfreward.config import ModelCfg
from selfreward.engine import HFEngine, Request, Sampling, ScoreRequest, VLLMEngine

MSG = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def second_adapter_dir(tiny_model_dir, tmp_path_factory):
    """Another adapter of the same base (every module the recipes train), for batches that hold two."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, init_lora_weights=False, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    out = tmp_path_factory.mktemp("adapter2")
    lora.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    return VLLMEngine(str(tiny_model_dir), ModelCfg(dtype="float32", max_model_len=512, kv_cache_gib=1), 16)


def test_vllm_sampling_is_seeded_per_request(vllm_engine):
    sp = Sampling(temperature=1.0, top_p=1.0, max_tokens=12)
    a = vllm_engine.generate([Request(MSG, seed=s) for s in (1, 2, 3)], sp)
    # same requests in another batch composition and order
    b = vllm_engine.generate([Request(MSG, seed=s) for s in (3, 9, 1)], sp)
    assert a[0].text == b[2].text and a[2].text == b[0].text
    assert len({c.text for c in a}) > 1
    assert all(c.n_tokens <= 12 and c.finish_reason in ("stop", "length") for c in a)


@pytest.mark.parametrize("engine_kind", ["vllm", "hf"])
def test_each_request_follows_its_own_sampling_in_a_mixed_batch(engine_kind, vllm_engine, tiny_model_dir):
    """eval batches sampled drift probes with greedy capability probes: each request keeps its own settings."""
    engine = vllm_engine if engine_kind == "vllm" else HFEngine(str(tiny_model_dir), ModelCfg(engine="hf",
                                                                                                dtype="float32"))
    sampled = Sampling(temperature=1.0, top_p=1.0, max_tokens=16, ignore_eos=True)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=6, ignore_eos=True)
    reqs = [Request(MSG, seed=5), Request(MSG, seed=0), Request(MSG, seed=7)]
    mixed = engine.generate(reqs, [sampled, greedy, sampled])
    assert [c.n_tokens for c in mixed] == [16, 6, 16]
    assert mixed[0].text == engine.generate([reqs[0]], sampled)[0].text
    assert mixed[1].text == engine.generate([reqs[1]], greedy)[0].text
    assert mixed[0].text != mixed[2].text  # the two sampled requests follow their own seeds
    with pytest.raises(ValueError, match="2 samplings for 3 requests"):
        engine.generate(reqs, [sampled, greedy])


def test_samples_sharing_a_prompt_prefill_follow_their_own_seeds(vllm_engine):
    """Prefix caching: N samples of one long prompt share its prefill, and each equals the sample its seed gives
    alone (cache cold) or beside other prompts."""
    long = [{"role": "user", "content": "Tell me about rivers and the sea. " * 30}]
    sp = Sampling(temperature=1.0, top_p=1.0, max_tokens=12)
    alone = [vllm_engine.generate([Request(long, seed=s)], sp)[0].text for s in (4, 5, 6)]
    shared = vllm_engine.generate([Request(long, seed=s) for s in (6, 5, 4)] * 3 + [Request(MSG, seed=4)], sp)
    assert [c.text for c in shared[:9]] == alone[::-1] * 3
    assert len(set(alone)) > 1


def test_vllm_serves_lora_adapter(vllm_engine, adapter_dir):
    sp = Sampling(temperature=0.0, max_tokens=12)
    base, lora, base2 = vllm_engine.generate(
        [Request(MSG, 0), Request(MSG, 0, adapter_dir), Request(MSG, 0)], sp)
    assert base.text == base2.text
    assert lora.text != base.text
    # base rows of a mixed batch are untouched by the adapter in the same batch
    assert vllm_engine.generate([Request(MSG, 0)], sp)[0].text == base.text


def test_prefill_continues_the_assistant_turn(vllm_engine):
    sp = Sampling(temperature=0.0, max_tokens=6)
    plain, prefilled = vllm_engine.generate([Request(MSG, 0), Request(MSG, 0, prefill="Score:")], sp)
    assert plain.text != prefilled.text


def test_score_matches_between_engines_and_sees_adapter(vllm_engine, tiny_model_dir, adapter_dir):
    """vLLM's prompt log-probabilities (base and LoRA rows in one batch, in both orders) against transformers +
    PEFT on the same checkpoint, float32."""
    hf = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32"))
    reqs = [ScoreRequest(MSG, "Blue, like the sky."), ScoreRequest(MSG, "Blue, like the sky.", adapter_dir),
            ScoreRequest(MSG, "Green, or maybe red as a rose."), ScoreRequest(MSG, "Green.", adapter_dir)]
    got = vllm_engine.score(reqs)
    again = vllm_engine.score(reqs[::-1])[::-1]
    want = hf.score(reqs)
    n = len(hf.tokenizer("Blue, like the sky.", add_special_tokens=False)["input_ids"])
    assert len(got[0]) == len(got[1]) == n
    assert all(x <= 0 for row in got for x in row)
    assert sum(got[1]) != pytest.approx(sum(got[0]), abs=1e-2)  # the adapter is applied
    for g, a, w in zip(got, again, want):
        assert g == pytest.approx(w, abs=1e-4)
        assert a == pytest.approx(w, abs=1e-4)


def test_base_rows_beside_an_adapter_ignore_the_other_lora_slot(vllm_engine, tiny_model_dir, adapter_dir,
                                                                 second_adapter_dir):
    """With both LoRA slots filled (eval scores a candidate, then its parent), a batch of base rows beside an
    adapter's rows gives each row its own model: a base row (index -1) must not pick up the last slot's adapter,
    in prefill (scoring) or in decode (generation)."""
    hf = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32"))
    for a in (adapter_dir, second_adapter_dir, adapter_dir):  # both slots hold an adapter from here on
        vllm_engine.score([ScoreRequest(MSG, "Blue.", a)])
    for a in (adapter_dir, second_adapter_dir):
        reqs = [ScoreRequest(MSG, "Blue, like the sky.", x) for x in (a, None, a, None)]
        got, want = vllm_engine.score(reqs), hf.score(reqs)
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=1e-4)
        assert sum(got[0]) != pytest.approx(sum(got[1]), abs=1e-2)
        sp = Sampling(temperature=0.0, max_tokens=8)
        gen = [Request(MSG, 0, x) for x in (a, None, None)]
        assert [c.text for c in vllm_engine.generate(gen, sp)] == [c.text for c in hf.generate(gen, sp)]


def test_hf_engine_greedy_agrees_with_vllm(vllm_engine, tiny_model_dir, adapter_dir):
    hf = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32"))
    sp = Sampling(temperature=0.0, max_tokens=8)
    reqs = [Request(MSG, 0), Request(MSG, 0, adapter_dir), Request(MSG, 0)]
    h = hf.generate(reqs, sp)
    v = vllm_engine.generate(reqs, sp)
    assert h[0].text == h[2].text  # disabling the adapter restores the base model
    assert [c.text for c in h] == [c.text for c in v]


def test_first_token_logprobs_agree_between_engines(vllm_engine, tiny_model_dir):
    hf = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32"))
    sp = Sampling(temperature=0.0, max_tokens=2, top_logprobs=5)
    req = [Request(MSG, 0, prefill="Winner:")]
    v = vllm_engine.generate(req, sp)[0].first_token_logprobs
    h = hf.generate(req, sp)[0].first_token_logprobs
    assert len(v) >= 1 and set(v) == set(h)
    for token, lp in v.items():
        assert h[token] == pytest.approx(lp, abs=1e-3)


def test_score_token_logprobs_agree_between_engines_and_see_the_adapter(vllm_engine, tiny_model_dir, adapter_dir):
    hf = HFEngine(str(tiny_model_dir), ModelCfg(engine="hf", dtype="float32"))
    ids = tuple(hf.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(6))
    sp = Sampling(temperature=0.0, max_tokens=1, score_token_ids=ids)
    reqs = [Request(MSG, 0, prefill="Score: "), Request(MSG, 0, adapter_dir, prefill="Score: ")]
    v = [c.score_logprobs for c in vllm_engine.generate(reqs, sp)]
    h = [c.score_logprobs for c in hf.generate(reqs, sp)]
    assert all(set(x) == set(ids) for x in v + h)  # every requested id, whatever its rank
    for a, b in zip(v, h):
        for t in ids:
            assert a[t] == pytest.approx(b[t], abs=1e-3)
    assert any(abs(v[0][t] - v[1][t]) > 1e-3 for t in ids)


def test_structured_outputs_force_a_parsable_ending(vllm_engine):
    import re

    rx = r"[^\n]{1,40}\nScore: [0-5]"
    outs = vllm_engine.generate([Request(MSG, s) for s in range(4)],
                                Sampling(temperature=1.0, max_tokens=64, regex=rx))
    for o in outs:  # a random model writes anything, yet every completion ends in a valid score
        assert re.fullmatch(rx, o.text), o.text
    hf = HFEngine.__new__(HFEngine)
    from selfreward.engine import EngineError

    with pytest.raises(EngineError, match="structured outputs need model.engine: vllm"):
        hf.generate([Request(MSG, 0)], Sampling(regex=rx))


@pytest.mark.parametrize("with_adapter", [False, True])
def test_hf_engine_sample_depends_only_on_its_seed_not_on_what_ran_before(tiny_model_dir, adapter_dir, with_adapter):
    """A resumed stage's first request must sample what it sampled as a later request of an uninterrupted run: a
    fresh engine's first request with an adapter gives the same text as the same request after others."""
    adapter = adapter_dir if with_adapter else None
    sp = Sampling(temperature=1.0, top_p=1.0, max_tokens=12)
    cfg = ModelCfg(engine="hf", dtype="float32")
    later = HFEngine(str(tiny_model_dir), cfg).generate([Request(MSG, seed=s, adapter=adapter) for s in (7, 8)], sp)
    first = HFEngine(str(tiny_model_dir), cfg).generate([Request(MSG, seed=8, adapter=adapter)], sp)
    assert first[0].text == later[1].text
    assert later[0].text != later[1].text  # the seed matters, so the equality above says something
