"""Checkpoints and the saved adapter: what the DPO and SFT trainers share to survive preemption and leave one adapter.

Contract: `stop_on_signal()` is a TrainerCallback after which every rank stops after the same optimizer step
when any rank got a stop signal, with one consistent checkpoint saved; `last_checkpoint(dir)` is the newest
complete checkpoint to resume from (a kill during a save leaves one without trainer_state.json, written last);
`save_adapter(trainer, out_dir, model_ref)` writes `out_dir/adapter/` atomically with only the trained adapter,
its base named by the recipe's `model.ref` and its config byte-identical across reruns.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfreward.stopping import stop_on_all_ranks


def stop_on_signal():
    """A stop signal (SLURM preemption) on any rank: every rank finishes the same optimizer step, one
    consistent checkpoint is saved, training stops. The flag is reduced across ranks after every step."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_on_all_ranks(args.device):
                control.should_save = True
                control.should_training_stop = True

    return StopOnSignal()


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint: a kill during a save leaves one without trainer_state.json (written last)."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


_ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def save_adapter(trainer, out_dir: Path, model_ref: str) -> None:
    """Save the trained adapter (gathered across ranks under ZeRO-3) and move it into place atomically.

    Only the trained "default" adapter is kept: TRL's frozen "ref" copy, the tokenizer and the model card
    (which is not reproducible) are dropped. The base model is named by the recipe's `model.ref` as given,
    not by the path it resolved to in this user's cache, so the adapter loads elsewhere (models.load_adapter).
    """
    tmp = out_dir / ".adapter.tmp"
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank: DeepSpeed gathers the partitioned weights
    if main:
        for extra in tmp.iterdir():
            if extra.name not in _ADAPTER_FILES:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        # PEFT writes target_modules from a set, in a per-process order: sort it so reruns are byte-identical
        adapter_cfg = json.loads((tmp / "adapter_config.json").read_text())
        if isinstance(adapter_cfg.get("target_modules"), list):
            adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])
        adapter_cfg["base_model_name_or_path"] = model_ref
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True))
        if (out_dir / "adapter").exists():
            shutil.rmtree(out_dir / "adapter")
        os.replace(tmp, out_dir / "adapter")
    trainer.accelerator.wait_for_everyone()
