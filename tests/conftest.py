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


# The whole loop on the tiny random Llama with transformers, in seconds: a random model's instructions pass any
# length and overlap filter, its judge verdicts carry almost no probability mass (min_score_mass ~0 keeps them),
# and every stage writes several shards.
TINY_LOOP = {
    "run": {"iterations": 1, "seed": 0},
    "model": {"engine": "hf", "dtype": "float32"},
    "data_gen": {"num_prompts": 3, "prompts_per_round": 4, "n_responses": 2, "max_tokens": 8,
                 "prompt_max_tokens": 12, "shard_size": 2, "min_words": 1, "max_similarity": 1.0,
                 "banned_words": []},
    "judge": {"mode": "logprob", "min_score_mass": 1.0e-9, "shard_size": 2, "known_answer_pairs": 0,
              "allow_truncated": True},
    "train": {"per_device_train_batch_size": 1, "max_length": 64, "lora_r": 8, "lora_dropout": 0.0,
              "save_steps": 1, "learning_rate": 5.0e-3},
    "eval": {"probes": "probes.jsonl", "capability_probes": "ifeval.jsonl", "capability_max_tokens": 8,
             "max_tokens": 8, "judge_max_tokens": 4, "shard_size": 2},
}


def _merged(base: dict, changes: dict) -> dict:
    """base with changes applied section by section; a change to None removes the key (the default applies)."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in changes.items():
        for key, value in values.items():
            if value is None:
                out.setdefault(section, {}).pop(key, None)
            else:
                out.setdefault(section, {})[key] = value
    return out


@pytest.fixture(scope="session")
def tiny_loop_recipe(tiny_model_dir, recipes_dir):
    """tiny_loop_recipe(dir, name, probes=4, ifeval=2, **sections) -> path: TINY_LOOP on the tiny model, written to
    dir/name.yaml with the first `probes` drift probes and `ifeval` capability probes beside it and the run
    directory under dir/runs; each keyword names a section whose keys replace TINY_LOOP's (None removes one)."""
    def write(tmp: Path, name: str, probes: int = 4, ifeval: int = 2, **sections) -> Path:
        for fname, n in (("probes.jsonl", probes), ("ifeval.jsonl", ifeval)):
            rows = (recipes_dir / "probes" / ("default.jsonl" if fname == "probes.jsonl" else fname)).read_text()
            (tmp / fname).write_text("\n".join(rows.splitlines()[:n]) + "\n")
        data = _merged(TINY_LOOP, {"run": {"name": name, "output_dir": str(tmp / "runs")},
                                   "model": {"ref": str(tiny_model_dir)}})
        return _write_recipe(tmp / f"{name}.yaml", _merged(data, sections))
    return write


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
