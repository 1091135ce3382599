"""sft: the paper's M1, before iteration 1: M0 fine-tuned with TRL's SFTTrainer and LoRA on instruction-following
(IFT) and evaluation-fine-tuning (EFT) data. Its adapter is the loop's M0 from then on.

Contract: runs once per run, in `iter_000/sft/` (`launch.mode: subprocess`: `python -m selfreward.train.sft RUN 0`,
through `accelerate launch` with an accelerate config). Reads `sft.ift` and `sft.eft` with `datasets`; an IFT row
is a prompt and completion (or a messages list whose last message is the assistant's); an EFT row is an
instruction, a response and a target judgment: its prompt is the judge prompt `judging.render` builds under the
recipe's constitution and judge format, so the model learns to judge in exactly the form the judge stage asks.
A judgment must end in the score line the judge's parser reads, which `check` verifies at `selfreward validate`.
Writes `train.jsonl` (the prompt-completion rows trained on), `adapter/` (LoRA of `train.lora_*`, so DPO continues
it), `log_history.jsonl` and `checkpoints/` (for resume); the manifest's metrics hold the loss curve's ends.
"""
from __future__ import annotations

import math
from pathlib import Path

from selfreward import constitution, datasource, judging, models
from selfreward.config import Config, RecipeError
from selfreward.lifecycle import Outputs, Stage
from selfreward.precision import use_bf16
from selfreward.records import write_jsonl

_RESERVED = {"output_dir", "logging_dir"}


def _judge_format(cfg: Config) -> str:
    """The format the judge stage renders prompts in (logprob mode reads a score-first slot)."""
    return "score_first" if cfg.judge.mode == "logprob" else cfg.judge.format


def _parse(text: str, con, fmt: str) -> float | None:
    if fmt == "reason_first":
        return judging.parse_reason_first(text, con)
    head = text.lstrip()
    return judging.parse_score_first(head[len("Score:"):], con) if head.startswith("Score:") else None


def _ift_rows(cfg: Config) -> list[dict]:
    src = cfg.sft.ift
    out = []
    for r in datasource.load(src, cfg.run.seed):
        if src.messages_column:
            msgs = r["messages"]
            if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict) \
                    or msgs[-1].get("role") != "assistant":
                raise datasource.DatasetError(f"{src.path} row {r['row']}: {src.messages_column} must be a list of "
                                              f"messages ending in the assistant's")
            prompt, completion = [dict(m) for m in msgs[:-1]], [dict(msgs[-1])]
        else:
            for role in ("prompt", "completion"):
                if not isinstance(r[role], str) or not r[role].strip():
                    raise datasource.DatasetError(f"{src.path} row {r['row']}: {src.columns()[role]!r} is not a "
                                                  f"non-empty string")
            prompt = [{"role": "user", "content": r["prompt"]}]
            completion = [{"role": "assistant", "content": r["completion"]}]
        out.append({"prompt": prompt, "completion": completion, "kind": "ift", "row": r["row"]})
    return out


def _eft_rows(cfg: Config) -> list[dict]:
    src = cfg.sft.eft
    con = constitution.load(cfg.judge.constitution)
    if len(con.units()) != 1:
        raise datasource.DatasetError(f"{src.path}: EFT data needs a constitution scored as a whole (scoring: "
                                      f"additive); {cfg.judge.constitution} scores each principle alone")
    fmt = _judge_format(cfg)
    _, principles = con.units()[0]
    out = []
    for r in datasource.load(src, cfg.run.seed):
        if not all(isinstance(r[k], str) for k in ("instruction", "response", "judgment")):
            raise datasource.DatasetError(f"{src.path} row {r['row']}: instruction, response and judgment must "
                                          f"be strings")
        if _parse(r["judgment"], con, fmt) is None:
            want = "end in a line `Score: N`" if fmt == "reason_first" else "start with `Score: N`"
            raise datasource.DatasetError(
                f"{src.path} row {r['row']}: the judgment must {want} with N from {con.score_min} to "
                f"{con.score_max} (judge.format {fmt}), as the judge's parser reads it")
        text = judging.render(con, principles, r["instruction"], r["response"], fmt)
        out.append({"prompt": [{"role": "user", "content": text}],
                    "completion": [{"role": "assistant", "content": r["judgment"]}], "kind": "eft",
                    "row": r["row"]})
    return out


def examples(cfg: Config) -> list[dict]:
    """The SFT rows in TRL's conversational prompt-completion format, IFT first, then EFT."""
    return (_ift_rows(cfg) if cfg.sft.ift else []) + (_eft_rows(cfg) if cfg.sft.eft else [])


def check(cfg: Config) -> None:
    """`selfreward validate`: the SFT data loads, has its columns and rows, and every EFT judgment parses;
    TRL validates the SFTConfig. Raises DatasetError or ValueError with one line."""
    import tempfile

    for src in (cfg.sft.ift, cfg.sft.eft):
        if src is not None:
            datasource.check(src)
    examples(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        build_sft_config(cfg, tmp)


def build_sft_config(cfg: Config, output_dir: str):
    import torch
    from trl import SFTConfig

    s = cfg.sft
    bad = _RESERVED & set(s.sft_overrides)
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))} cannot be overridden (selfreward decides where artifacts go)")
    kwargs = dict(
        output_dir=output_dir, learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, max_length=s.max_length,
        seed=cfg.run.seed, data_seed=cfg.run.seed, logging_steps=1, save_strategy="steps",
        save_steps=cfg.train.save_steps, save_total_limit=1, report_to=[], bf16=use_bf16(cfg.train.precision),
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, lr_scheduler_type="cosine",
        warmup_steps=0, dataset_num_proc=None,
    )
    kwargs.update(s.sft_overrides)
    return SFTConfig(**kwargs)


def fit(cfg: Config, iter_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from selfreward.stopping import Preempted, stop_on_all_ranks, stop_signal
    from selfreward.train.checkpoints import last_checkpoint, save_adapter, stop_on_signal

    out_dir = iter_dir / "sft"
    rows = examples(cfg)
    write_jsonl(out_dir / "train.jsonl", rows)
    base = models.resolve(cfg.model.ref)
    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    peft_config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                             target_modules=t.lora_target_modules, task_type="CAUSAL_LM")
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=build_sft_config(cfg, str(out_dir / "checkpoints")), train_dataset=data,
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.add_callback(stop_on_signal())
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out_dir / "checkpoints"))
    if trainer.state.global_step < trainer.state.max_steps and stop_on_all_ranks(trainer.args.device):
        raise Preempted(f"SFT stopped after step {trainer.state.global_step} on signal {stop_signal()}; "
                        f"checkpoint saved")
    history = [h for h in trainer.state.log_history if "loss" in h]
    if any(not math.isfinite(h["loss"]) for h in history):
        raise RecipeError("sft: the loss became non-finite; lower sft.learning_rate")
    save_adapter(trainer, out_dir, cfg.model.ref)
    if trainer.accelerator.is_main_process:
        write_jsonl(out_dir / "log_history.jsonl", history)
    losses = [h["loss"] for h in history]
    return {"examples": len(rows), "ift_examples": sum(r["kind"] == "ift" for r in rows),
            "eft_examples": sum(r["kind"] == "eft" for r in rows), "steps": trainer.state.global_step,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_mean": round(result.training_loss, 6),
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
            "world_size": trainer.accelerator.num_processes, "precision": "bf16" if trainer.args.bf16 else "fp32",
            "base_model": cfg.model.ref}


def run(cfg: Config, iter_dir: Path) -> Outputs:
    metrics = fit(cfg, iter_dir)
    out = iter_dir / "sft"
    return Outputs({"train": out / "train.jsonl", "adapter": out / "adapter", "log_history": out / "log_history.jsonl"},
                   metrics)


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(key):
        return "n/a" if x.get(key) is None else f"{x[key]:.4f}"

    return (f"sft: {x['ift_examples']} IFT + {x['eft_examples']} EFT examples, {x['steps']} steps, loss "
            f"{f('loss_first')} -> {f('loss_last')}, {x['precision']}; M0 is now {x['base_model']} + sft adapter")


STAGE = Stage("sft", reads=("sft", "model", "run.seed", "train.lora_r", "train.lora_alpha", "train.lora_dropout",
                            "train.lora_target_modules", "train.precision", "judge.constitution", "judge.mode",
                            "judge.format"),
              run=run, summary=summary)


if __name__ == "__main__":  # launch.mode: subprocess runs `python -m selfreward.train.sft RUN_DIR 0`
    from selfreward.lifecycle import stage_main

    stage_main(STAGE)
