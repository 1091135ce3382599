import os

# tests never touch the network
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session")
def recipes_dir() -> Path:
    """The recipes installed with the package (the repository's recipes/ in an editable install)."""
    from selfreward.config import RECIPES_DIR

    return RECIPES_DIR


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors checkpoint (converted once, cached)."""
    from selfreward import models

    return Path(models.resolve("embedded:smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_dir) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, built in-process."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smol_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def write_recipe():
    """write_recipe(path, data) -> path: a recipe file from a dict."""
    return _write_recipe


@pytest.fixture(scope="session")
def make_pairs():
    """make_pairs(n) -> n preference rows in TRL's conversational format with provenance."""
    def rows(n=8):
        return [{"prompt": [{"role": "user", "content": f"Question {i}: is water wet?"}],
                 "chosen": [{"role": "assistant", "content": "Yes. Water makes things wet."}],
                 "rejected": [{"role": "assistant", "content": "Bananas are purple on Tuesdays."}],
                 "provenance": {"prompt_id": f"p{i}", "chosen_score": 5, "rejected_score": 1}} for i in range(n)]
    return rows


@pytest.fixture
def recipe_data(tmp_path, recipes_dir):
    """A small valid recipe with every file copied next to it (so tests can break one)."""
    for sub in ("seeds", "constitutions", "probes", "templates"):
        shutil.copytree(recipes_dir / sub, tmp_path / sub)
    return {
        "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "iterations": 1},
        "data_gen": {"seeds": "seeds/instructions.jsonl", "num_prompts": 4, "n_responses": 2},
        "judge": {"constitution": "constitutions/default.md"},
        "eval": {"probes": "probes/default.jsonl", "pairwise_template": "templates/pairwise.md"},
    }


@pytest.fixture
def cli(tmp_path):
    """cli(*args, cwd=..., timeout=...) -> CompletedProcess: the real `selfreward` command line, run from a
    directory unrelated to the repository."""
    def run(*args, cwd=None, timeout=300):
        return subprocess.run([sys.executable, "-m", "selfreward.cli", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd or tmp_path, timeout=timeout)
    return run
