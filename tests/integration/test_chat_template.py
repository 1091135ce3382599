"""Bringing one's own model: `selfreward validate` (and `run`) refuse a model whose tokenizer has no chat template in
one line with exit 2, from the tokenizer files alone, before any weights load; a hub id is checked in the local
cache only, and when its files are not there validate says the template could not be checked."""
import json

import pytest

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


def _tiny_llama(out, chat_template=None):
    """A tiny random Llama and a word-level tokenizer, built in-process and saved as a model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "user", "assistant", "hello", "world", ":"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = chat_template
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    return _tiny_llama(tmp_path_factory.mktemp("bare-llama"))


def test_a_model_without_chat_template_is_refused_in_one_line(tmp_path, bare_model, recipe_data, write_recipe, cli):
    config = json.loads((bare_model / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and not (bare_model / "chat_template.jinja").exists()
    recipe_data["model"] = {"ref": str(bare_model)}
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    for command in ("validate", "run"):
        out = cli(command, recipe)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert lines[0].startswith(f"selfreward: error: {recipe}: model.ref: {bare_model} has no chat template")
    assert not (tmp_path / "runs").exists()  # run stopped before the run directory was made


def test_the_same_model_with_a_chat_template_validates(tmp_path, recipe_data, write_recipe, cli):
    model = _tiny_llama(tmp_path / "llama", chat_template=TEMPLATE)
    recipe_data["model"] = {"ref": str(model)}
    out = cli("validate", write_recipe(tmp_path / "r.yaml", recipe_data))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f": ok (1 iterations, model {model}," in out.stdout and "chat template" not in out.stdout


def _cache_repo(hub, repo, files):
    """A hub id in a Hugging Face cache, laid out as `hf download` leaves it."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    for name, text in files.items():
        (snapshot / name).write_text(text)


def test_hub_ids_are_checked_in_the_cache_only(tmp_path, recipe_data, write_recipe, cli, monkeypatch):
    hub = tmp_path / "hub"
    _cache_repo(hub, "acme/base-only", {"tokenizer_config.json": json.dumps({"model_max_length": 2048})})
    _cache_repo(hub, "acme/chat", {"tokenizer_config.json": "{}", "chat_template.jinja": TEMPLATE})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    outs = {}
    for ref in ("acme/base-only", "acme/chat", "acme/not-downloaded"):
        recipe_data["model"] = {"ref": ref}
        outs[ref] = cli("validate", write_recipe(tmp_path / f"{ref.split('/')[1]}.yaml", recipe_data))
    refused = outs["acme/base-only"]
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
    assert "model.ref: acme/base-only has no chat template" in refused.stderr
    assert outs["acme/chat"].returncode == 0 and "chat template" not in outs["acme/chat"].stdout
    unknown = outs["acme/not-downloaded"]
    assert unknown.returncode == 0, unknown.stderr[-2000:]
    assert ("model.ref: chat template of acme/not-downloaded not checked: its tokenizer files are not in the local "
            "Hugging Face cache") in unknown.stdout
