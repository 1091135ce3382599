"""DPO + LoRA with TRL's DPOTrainer. Reference policy = M(k-1).

Iteration 1 adds a fresh LoRA adapter to M0, and the reference is M0 (adapter disabled). Iteration k > 1
continues adapter k-1 (lineage `adapter`); TRL then keeps a frozen copy of it as the "ref" adapter, so the
reference is M(k-1) = M0 + adapter k-1.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from selfreward import artifacts, models
from selfreward.config import Config
from selfreward.exits import IterationEnded
from selfreward.precision import use_bf16
from selfreward.records import write_jsonl
from selfreward.stopping import Preempted, stop_on_all_ranks, stop_signal
from selfreward.train.checkpoints import last_checkpoint, save_adapter, stop_on_signal

# keys selfreward sets from its own recipe fields; dpo_overrides may not redefine where artifacts go
_RESERVED = {"output_dir", "logging_dir"}


class TrainingDiverged(IterationEnded):
    """The loss became NaN or infinite: the adapter is not saved and the iteration is not promoted."""


def build_dpo_config(cfg: Config, output_dir: str):
    """The trl.DPOConfig of a recipe; TRL validates dpo_overrides (unknown or bad values raise)."""
    import torch
    from trl import DPOConfig

    t = cfg.train
    bad = _RESERVED & set(t.dpo_overrides)
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))} cannot be overridden (selfreward decides where artifacts go)")
    cuda = torch.cuda.is_available()
    kwargs = dict(
        output_dir=output_dir, beta=t.beta, learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length, seed=cfg.run.seed, data_seed=cfg.run.seed, logging_steps=1,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=1, report_to=[],
        bf16=use_bf16(t.precision), use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=False, lr_scheduler_type="cosine", warmup_steps=0,
        # the reference (M(k-1)) scores every pair once before training, in batches larger than the training
        # batch, instead of once per step; batches of similar lengths cut padding (see _Trainer). Not under
        # ZeRO-3: forward passes before training (adapter disabled) leave DeepSpeed's parameter-fetch trace
        # out of step with training's, and the first training step fails ("pop from an empty deque")
        precompute_ref_log_probs=os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") != "3",
        precompute_ref_batch_size=4 * t.per_device_train_batch_size,
        train_sampling_strategy="group_by_length",
        # TRL's default recomputes every layer's forward in backward to save activation memory: a GPU's scarce
        # resource, not a CPU's, where the recompute is pure cost (a forward pass per step); overridable
        gradient_checkpointing=cuda,
    )
    kwargs.update(t.dpo_overrides)
    return DPOConfig(**kwargs)


def _lora_inputs_uncast(trainer):
    """Under bf16 autocast, LoRA modules take their bf16 inputs as they are (a context for training).

    PEFT keeps adapter weights in fp32 and casts each LoRA module's input to fp32, but autocast then casts it back
    to bf16 for the matmul: two copies of the activations per module and pass (and their gradients), for the same
    bf16 product. On an H200 such copies were about 15% of a DPO step's GPU time (docs/benchmarks.md). Without
    autocast (fp32 training) or under DeepSpeed (which casts adapters itself) the cast stays."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(trainer.model, active=trainer.args.bf16 and not trainer.is_deepspeed_enabled)


def _trainer_class():
    """TRL's DPOTrainer, with `train_sampling_strategy: group_by_length` measured on its tokenized pairs, and
    `torch_compile` applied per decoder layer.

    transformers' length-grouped sampler looks for an `input_ids` column, which DPO datasets do not have; here a
    pair's length is its prompt plus its longer answer, the width it pads its batch to."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import DPOTrainer

    class _Trainer(DPOTrainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            # `torch_compile: true` compiles each decoder layer on its own (accelerate's regional compilation):
            # every layer reuses the first one's code, and the cold start is one layer's compile, not the whole
            # model's. An explicit ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION decides instead.
            if self.args.torch_compile and "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION" not in os.environ:
                self.accelerator.state.dynamo_plugin.use_regional_compilation = True

        def _get_train_sampler(self, train_dataset=None):
            data = self.train_dataset if train_dataset is None else train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "prompt_ids" not in data.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(p) + max(len(c), len(r))
                       for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return _SeededLengthGrouped(seed, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths)

    class _SeededLengthGrouped(LengthGroupedSampler):
        """Length-grouped batches in an order fixed by the seed and the epoch. transformers' sampler draws from
        the global RNG, whose state differs between processes, so a resumed run (which skips the batches it
        already trained on) saw other batches than the uninterrupted run (tests/integration/test_resume_kill.py)."""

        def __init__(self, seed: int, *args, **kwargs):
            import torch

            super().__init__(*args, generator=torch.Generator(), **kwargs)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer (through accelerate) calls it every epoch
            self.epoch = epoch

        def __iter__(self):
            self.generator.manual_seed(self.seed + self.epoch)
            return super().__iter__()

    return _Trainer


def train(cfg: Config, iter_dir: Path) -> dict:
    """Train iteration k's adapter and save it to train/adapter; returns the summary metrics."""
    return fit(cfg, iter_dir)[1]


def fit(cfg: Config, iter_dir: Path):
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out_dir = iter_dir / "train"
    if not torch.cuda.is_available():
        from selfreward.train import cpu_logprob

        # TRL's fused LM head, with whole-vocabulary kernels on CPU tensors; before any weights load, since it
        # refuses a TRL version it was not written for
        cpu_logprob.install()
    base = models.resolve(cfg.model.ref)
    t = cfg.train
    # frozen base weights in bf16 where bf16 is computed natively (autocast would cast them at every matmul);
    # LoRA weights stay fp32 (PEFT's autocast_adapter_dtype). DeepSpeed keeps fp32 weights and applies its own
    # mixed precision.
    bf16_weights = torch.cuda.is_available() or (
        use_bf16(t.precision) and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true")
    dtype = torch.bfloat16 if bf16_weights else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    parent = artifacts.parent_adapter(iter_dir)
    peft_config = None
    if parent:
        models.check_adapter_base(parent, base)
        model = PeftModel.from_pretrained(model, parent, is_trainable=True)
    else:
        peft_config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                 target_modules=t.lora_target_modules, task_type="CAUSAL_LM")
    data = load_dataset("json", data_files=str(iter_dir / "judge" / "pairs.jsonl"), split="train")
    data = data.remove_columns([c for c in data.column_names if c not in ("prompt", "chosen", "rejected")])
    args = build_dpo_config(cfg, str(out_dir / "checkpoints"))
    trainer = _trainer_class()(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                               peft_config=peft_config)
    trainer.add_callback(stop_on_signal())
    resume = last_checkpoint(out_dir / "checkpoints")
    if resume and trainer.accelerator.is_main_process:  # what a requeued job's log shows
        print(f"train: resuming from {Path(resume).name} of {out_dir / 'checkpoints'}", flush=True)
    if resume:  # TRL counts the tokens trained on in the trainer, not in the checkpoint: carry it over
        logged = json.loads((Path(resume) / "trainer_state.json").read_text())["log_history"]
        trainer._total_train_tokens = int(next((h["num_tokens"] for h in reversed(logged) if "num_tokens" in h), 0))
    with _lora_inputs_uncast(trainer):
        result = trainer.train(resume_from_checkpoint=resume)
    # a signal after the last step does not undo finished training: the adapter is saved, the next stage stops
    if trainer.state.global_step < trainer.state.max_steps and stop_on_all_ranks(trainer.args.device):
        raise Preempted(f"training stopped after step {trainer.state.global_step} on signal {stop_signal()}; "
                        f"checkpoint saved")
    # TRL can log a NaN step's loss as 0: the gradient norm and log-probabilities tell the truth
    watched = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins")
    bad = [(h["step"], key) for h in trainer.state.log_history for key in watched
           if isinstance(h.get(key), float) and not math.isfinite(h[key])]
    if bad:
        raise TrainingDiverged(f"DPO loss became non-finite at step {bad[0][0]} ({bad[0][1]} is not finite)")
    save_adapter(trainer, out_dir, cfg.model.ref)
    if trainer.accelerator.is_main_process:  # per-step curves (loss, reward margins) for tracking and reports
        write_jsonl(out_dir / "log_history.jsonl", [h for h in trainer.state.log_history if "loss" in h])

    return trainer, _summary(trainer, result, len(data), parent, int(Path(resume).name.split("-")[1]) if resume else 0)


def _summary(trainer, result, n_pairs: int, parent: str | None, resumed_from: int) -> dict:
    history = [h for h in trainer.state.log_history if "loss" in h]

    def values(key):
        return [h[key] for h in history if key in h]

    def last(key):
        return round(values(key)[-1], 6) if values(key) else None

    def mean(key):
        return round(sum(values(key)) / len(values(key)), 6) if values(key) else None

    return {"pairs": n_pairs, "steps": trainer.state.global_step,
            "resumed_from_step": resumed_from,  # steps this run trained: steps - resumed_from_step
            "loss_first": values("loss")[0] if history else None, "loss_last": last("loss"),
            "loss_mean": round(result.training_loss, 6), "reward_accuracy_mean": mean("rewards/accuracies"),
            "reward_margin_last": last("rewards/margins"),
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
            # TRL's count of the tokens trained on (prompt and both answers, every rank) per second of training
            "tokens_per_s": round(values("num_tokens")[-1] / max(result.metrics.get("train_runtime", 0.0), 1e-9), 1)
            if values("num_tokens") else None,
            "samples_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
            # what ran, not what was asked: the ZeRO stage DeepSpeed trained under (0: no DeepSpeed), and the first
            # step's gradient norm (averaged over ranks: a sum instead of a mean would double it, which Adam's
            # scale-free steps would hide)
            "world_size": trainer.accelerator.num_processes, "zero_stage": _zero_stage(trainer),
            "grad_norm_first": round(values("grad_norm")[0], 6) if values("grad_norm") else None,
            "precision": "bf16" if trainer.args.bf16 else "fp32", "reference": parent or "M0 (adapter disabled)"}


def _zero_stage(trainer) -> int:
    if not trainer.is_deepspeed_enabled:
        return 0
    return int(trainer.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"])
