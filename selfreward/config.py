"""Recipes: YAML loaded into one pydantic v2 model with unknown keys rejected.

Contract: `load` returns a validated `Config` or raises `RecipeError` with one line naming the file, the key
path and what was expected; it never loads a model. Every field carries a one-line description and a default
that is right for the small CPU case. Paths in a recipe are relative to the recipe file; a bare name such as
`smollm2-135m-cpu` is a recipe shipped with the package (`selfreward recipes`). Keys that go to TRL carry
TRL's names. `identity` is what a run and its stages are identified by: operational keys (`OPERATIONAL`)
removed, files by content.
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from selfreward.datasource import InstructionDataset, JudgeDataset, PromptDataset

# the recipes, constitutions, templates, seeds, probes and accelerate configs installed with the package
RECIPES_DIR = Path(str(files("selfreward.recipes")))


class RecipeError(ValueError):
    """A user mistake in a recipe: the message is one line naming the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunCfg(Section):
    name: str = Field("default", description="Run name: the run directory is <output_dir>/<name>.",
                      pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = Field("runs", description="Parent directory of run directories (relative to the cwd).")
    iterations: int = Field(2, ge=1, le=100, description="Number of self-rewarding iterations to run.")
    seed: int = Field(0, ge=0, description="Seed for sampling, shuffling and LoRA initialisation.")
    oversight: Literal["auto", "manual"] = Field(
        "auto", description="auto: a passed gate promotes; manual: the run stops after the gate until "
                            "`selfreward approve` or `selfreward reject` decides.")


class ModelCfg(Section):
    ref: str = Field("embedded:smollm2-135m-instruct",
                     description="M0: a hub id, a local directory, or embedded:<name>.")
    engine: Literal["vllm", "hf"] = Field("vllm", description="Inference engine: vLLM, or transformers generate.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Inference dtype; auto = bf16 only where the hardware computes it natively (CUDA with "
                            "bf16, CPUs with AVX512-BF16 or AMX), else fp16 on GPUs and fp32 on CPUs.")
    max_model_len: int = Field(2048, ge=256, description="Context length the engine reserves KV cache for.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint (off by default).")
    kv_cache_gib: int = Field(2, ge=1, description="vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory fraction (CUDA only).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size (CUDA only).")


# IFEval instruction types (lm-eval's checkers): what data_gen attaches by default, and what it holds out so that
# eval can show whether a gain generalises to types never trained on. Both are types of the shipped probes.
DEFAULT_CONSTRAINT_TYPES = [
    "punctuation:no_comma", "change_case:english_lowercase", "length_constraints:number_words",
    "length_constraints:number_paragraphs", "detectable_format:number_bullet_lists", "detectable_format:title",
    "detectable_format:number_highlighted_sections", "detectable_format:json_format",
    "detectable_format:multiple_sections", "detectable_content:number_placeholders", "keywords:existence",
    "keywords:forbidden_words", "keywords:frequency", "keywords:letter_frequency", "startend:end_checker",
    "change_case:capital_word_frequency"]
DEFAULT_HOLD_OUT_TYPES = ["change_case:english_capital", "detectable_content:postscript", "startend:quotation",
                          "length_constraints:number_sentences"]


class ConstraintsCfg(Section):
    share: float = Field(0.0, ge=0, le=1, description="Share of each iteration's new prompts that carry verifiable "
                                                      "instructions (0 = none, pure self-judging).")
    types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONSTRAINT_TYPES), min_length=1,
                             description="IFEval instruction types attached to training prompts (lm-eval's ids).")
    hold_out_types: list[str] = Field(default_factory=lambda: list(DEFAULT_HOLD_OUT_TYPES),
                                      description="Types never attached to training prompts: eval reports them "
                                                  "apart, as generalisation.")
    max_per_prompt: int = Field(1, ge=1, le=3, description="A constrained prompt carries 1 to this many "
                                                            "non-conflicting instructions.")

    @model_validator(mode="after")
    def _disjoint(self) -> "ConstraintsCfg":
        both = sorted(set(self.types) & set(self.hold_out_types))
        if both:
            raise ValueError(f"hold_out_types {both} are also training types (types): a held-out type is never "
                             f"trained on")
        return self


class DataGenCfg(Section):
    source: Literal["self_instruct", "dataset"] = Field(
        "self_instruct", description="Where new prompts come from: M(k-1) writes them from the seeds "
                                     "(self-instruct), or they are drawn from data_gen.dataset.")
    dataset: PromptDataset | None = Field(None, description="source: dataset: a local JSONL/Parquet file or a hub "
                                                            "id, its prompt column and an optional sample_size.")
    pool: Literal["replace", "accumulate"] = Field(
        "replace", description="replace: an iteration responds to its new prompts only; accumulate: earlier "
                               "iterations' prompts stay in the pool and are answered again.")
    seeds: str = Field(str(RECIPES_DIR / "seeds/instructions.jsonl"),
                       description="JSONL of seed instructions ({'id', 'instruction'}) for few-shot self-instruct; "
                                   "new prompts of either source are deduplicated against them.")
    num_prompts: int = Field(32, ge=1, description="New prompts to synthesise (or draw) per iteration.")
    fewshot: int = Field(4, ge=1, le=16, description="Seed examples shown in each self-instruct request.")
    prompts_per_round: int = Field(64, ge=1, description="Candidate instructions requested per synthesis round.")
    max_rounds: int = Field(8, ge=1, description="Synthesis rounds before giving up on reaching num_prompts.")
    prompt_temperature: float = Field(1.0, ge=0, description="Sampling temperature for instruction synthesis.")
    prompt_prefill: str = Field("Task:", description="Text the synthesis answer starts with (kept in the raw text).")
    prompt_max_tokens: int = Field(64, ge=8, description="Token budget of one synthesised instruction.")
    min_words: int = Field(4, ge=1, description="Shortest accepted instruction, in words.")
    max_words: int = Field(60, ge=1, description="Longest accepted instruction, in words.")
    max_similarity: float = Field(0.7, gt=0, le=1,
                                  description="Reject an instruction whose ROUGE-L F with any seen one reaches this.")
    banned_words: list[str] = Field(
        default_factory=lambda: ["image", "images", "picture", "pictures", "photo", "graph", "graphs", "file",
                                 "files", "map", "maps", "draw", "plot", "video", "audio", "flowchart",
                                 "diagram", "link", "url", "http", "task", "tasks", "example", "examples"],
        description="Instructions containing any of these words (case-insensitive) are rejected.")
    n_responses: int = Field(4, ge=2, description="Candidate responses sampled per prompt (N >= 2).")
    anchor_responses: int = Field(0, ge=0, description="M0 responses per prompt for judge.pair_strategy: "
                                                       "anchored (0 = none).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature for responses.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling for responses.")
    max_tokens: int = Field(192, ge=8, description="Token budget of one response.")
    shard_size: int = Field(32, ge=1, description="Responses per shard; a rerun skips finished shards.")
    constraints: ConstraintsCfg = Field(default_factory=ConstraintsCfg,
                                        description="Verifiable instructions attached to new prompts (IFEval format).")

    @model_validator(mode="after")
    def _words(self) -> "DataGenCfg":
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        if self.source == "dataset" and self.dataset is None:
            raise ValueError("source: dataset needs a dataset section (path, prompt_column, ...)")
        return self


class JudgeCfg(Section):
    constitution: str = Field(str(RECIPES_DIR / "constitutions/default.md"),
                              description="Constitution: Markdown with front matter, [id] principles and a template.")
    mode: Literal["sampled", "logprob"] = Field(
        "sampled", description="sampled: the judge writes, then Score: N (the paper); logprob: expected score "
                               "from the score slot's next-token distribution in one pass (fast).")
    format: Literal["reason_first", "score_first"] = Field(
        "reason_first", description="sampled mode: justification then score (the paper), or score first.")
    structured: bool = Field(True, description="sampled mode: vLLM structured outputs force a parsable ending.")
    num_judgments: int = Field(3, ge=1, description="sampled mode: judgments per response (k); valid ones are "
                                                    "averaged.")
    temperature: float = Field(0.7, ge=0, description="sampled mode: judge sampling temperature.")
    max_tokens: int = Field(128, ge=8, description="sampled mode: token budget of one judgment.")
    reason_max_chars: int = Field(300, ge=16, description="sampled + structured: longest justification, in "
                                                          "characters (keeps the score inside max_tokens).")
    min_score_mass: float = Field(0.5, gt=0, le=1, description="logprob mode: a judgment whose probability mass "
                                                               "on valid score tokens is below this is invalid.")
    pair_strategy: Literal["best_worst", "length_controlled", "anchored"] = Field(
        "best_worst", description="Chosen/rejected selection: best vs worst (the paper); length_controlled: "
                                  "shortest of the top band vs longest of the bottom band (Meta-Rewarding); "
                                  "anchored: rejected from M0's anchor responses (Temporal Self-Rewarding).")
    min_margin: float = Field(0.0, ge=0, description="Minimum chosen-rejected score gap; ties never pair.")
    length_band: float = Field(0.0, ge=0, description="length_controlled: score tolerance of the top and bottom "
                                                      "bands.")
    confirm_both_orders: bool = Field(False, description="Keep a pair only if the same judge prefers chosen in a "
                                                         "pairwise comparison in both orders.")
    allow_truncated: bool = Field(False, description="Let a response cut by max_tokens be chosen.")
    verify: Literal["none", "ifeval"] = Field(
        "none", description="ifeval: every response to a constrained prompt is checked by lm-eval's IFEval checkers "
                            "(strict and loose, per instruction); the verdicts are stored on its judgments.")
    reward: Literal["auto", "judge", "verifier", "verifier_first", "weighted"] = Field(
        "auto", description="How a constrained prompt's responses are ranked: verifier_first (auto's choice with "
                            "verify: ifeval): share of instructions passed (strict), the judge's score breaks ties; "
                            "verifier: the share alone (a tie makes no pair); weighted: verifier_weight x share + "
                            "(1 - verifier_weight) x the judge's score scaled to [0, 1]; judge: the judge alone "
                            "(auto's choice without verify). Unconstrained prompts are always ranked by the judge.")
    verifier_weight: float = Field(0.5, ge=0, le=1, description="reward: weighted: the verifier's weight.")
    verify_control: Literal["none", "shuffled"] = Field(
        "none", description="shuffled: a negative control; each response gets the verdicts of a response to the "
                            "same prompt drawn at random (seeded), so the reward carries no information.")
    known_answer_pairs: int = Field(32, ge=0, description="Known-answer checks of the judge per iteration "
                                                          "(original vs corrupted copy); 0 turns them off.")
    shard_size: int = Field(64, ge=1, description="Judge requests per shard; a rerun skips finished shards.")

    @model_validator(mode="after")
    def _signals(self) -> "JudgeCfg":
        if self.verify == "none" and self.reward in ("verifier", "verifier_first", "weighted"):
            raise ValueError(f"reward: {self.reward} ranks by the verifier's verdicts, which need verify: ifeval")
        if self.verify == "none" and self.verify_control != "none":
            raise ValueError("verify_control: shuffled shuffles the verifier's verdicts, which need verify: ifeval")
        return self

    def reward_rule(self) -> str:
        return ("verifier_first" if self.verify == "ifeval" else "judge") if self.reward == "auto" else self.reward


class TrainCfg(Section):
    lineage: Literal["adapter"] = Field("adapter", description="Iteration k's adapter starts from adapter k-1.")
    beta: float = Field(0.1, gt=0, description="DPO beta (KL strength); must be positive.")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate for the LoRA weights.")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the iteration's pairs.")
    per_device_train_batch_size: int = Field(4, ge=1, description="Per-device train batch size (pairs).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(512, ge=32, description="Max tokens of prompt + completion.")
    lora_r: int = Field(16, ge=1, le=512, description="LoRA rank (at most 512, vLLM's largest).")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names LoRA adapts.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Training autocast: auto = bf16 where the GPU or CPU (AVX512-BF16/AMX) supports it.")
    save_steps: int = Field(20, ge=1, description="Checkpoint every this many optimizer steps (for resume).")
    dpo_overrides: dict[str, Any] = Field(default_factory=dict,
                                          description="Extra trl.DPOConfig arguments, validated by TRL.")


class SftCfg(Section):
    enabled: bool = Field(False, description="Before iteration 1, fine-tune M0 with TRL's SFTTrainer (LoRA of "
                                             "train.lora_*) on ift and eft data; the result is the loop's M0.")
    ift: InstructionDataset | None = Field(None, description="Instruction-following data: prompt and completion "
                                                             "columns, or a messages column.")
    eft: JudgeDataset | None = Field(None, description="Evaluation fine-tuning data: instruction, response and a "
                                                       "judgment ending in `Score: N`, rendered with the "
                                                       "constitution's judge prompt.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate for the SFT LoRA weights.")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the SFT data.")
    per_device_train_batch_size: int = Field(4, ge=1, description="Per-device SFT batch size (examples).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(1024, ge=32, description="Max tokens of prompt + completion, longer ones cut (an EFT "
                                                     "prompt holds the whole judge prompt: ~350 tokens by default).")
    sft_overrides: dict[str, Any] = Field(default_factory=dict,
                                          description="Extra trl.SFTConfig arguments, validated by TRL.")

    @model_validator(mode="after")
    def _data(self) -> "SftCfg":
        if self.enabled and self.ift is None and self.eft is None:
            raise ValueError("enabled needs ift or eft data (or both)")
        return self


GUARDS = ("capability", "capability_trained", "capability_held_out", "length", "distinct2", "semantic_similarity", "repetition", "cross_overlap", "kl",
          "judge_valid_rate", "known_answer", "judge_saturation")


class GateCfg(Section):
    improvement: list[Literal["win_rate", "capability", "capability_trained", "capability_held_out"]] = Field(
        default_factory=lambda: ["win_rate", "capability", "capability_trained"], min_length=1,
        description="Evidence of improvement: promotion needs at least one of these significant at 95% "
                    "(capability: IFEval prompt-level strict accuracy on every probe; capability_trained / "
                    "capability_held_out: instruction-level strict accuracy on the types the run trains on / "
                    "holds out, measured on probes never trained on; a run without constraints has no trained "
                    "split). The held-out split guards by default (capability_held_out in guards).")
    guards: list[Literal[GUARDS]] = Field(default_factory=lambda: list(GUARDS),
                                          description="Guarded metrics: any that regresses beyond its bound refuses.")
    min_win_rate: float = Field(0.55, ge=0, lt=1,
                                description="Improvement when the frozen-M0 win rate's 95% lower bound is above this. "
                                            "0.55: the win rate averages soft preferences, so its interval is narrow "
                                            "and a barely changed model clears 0.5 by thousandths; 0.55 asks the "
                                            "frozen judge to prefer the candidate 11 times to 9.")
    capability_needs_hard_gain: bool = Field(
        True, description="A capability gain counts only when the probes a constant short answer fails gain too "
                          "(a reward from checkers can teach a model to say less instead of following "
                          "instructions).")
    min_capability_gain: float = Field(0.0, ge=0, lt=1, description="Improvement when the 95% lower bound of the "
                                                                    "prompt-level strict accuracy gain exceeds this.")
    max_capability_drop: float = Field(0.05, ge=0, le=1, description="Guard: accuracy may fall at most this below "
                                                                     "the previous model and M0 (6 probes in 120).")
    min_length_ratio: float = Field(0.5, gt=0, description="Guard: candidate/previous mean length at least this.")
    max_length_ratio: float = Field(2.0, gt=0, description="Guard: at most this (Self-Rewarding runs grew 2.3x in "
                                                           "three iterations).")
    min_distinct2_ratio: float = Field(0.8, gt=0, le=1, description="Guard: distinct-2 at least this times previous.")
    max_similarity_rise: float = Field(0.1, ge=0, le=1, description="Guard: mean pairwise embedding cosine may "
                                                                    "rise at most this (semantic collapse).")
    max_repetition_rise: float = Field(0.1, ge=0, le=1, description="Guard: repeated 4-gram share within responses "
                                                                    "may rise at most this.")
    max_overlap_rise: float = Field(0.15, ge=0, le=1, description="Guard: cross-response 4-gram overlap may rise "
                                                                  "at most this.")
    max_kl_per_token: float = Field(1.0, gt=0, description="Guard: KL(candidate || previous) per token at most "
                                                           "this, in nats (one DPO iteration moves far less).")
    max_judge_valid_drop: float = Field(0.2, ge=0, le=1, description="Guard: the candidate-as-judge valid rate may "
                                                                     "fall at most this.")
    max_known_answer_drop: float = Field(0.15, ge=0, le=1, description="Guard: the judge's known-answer accuracy may "
                                                                       "fall at most this from the previous iteration.")
    max_top_score_share: float = Field(0.9, gt=0, le=1, description="Guard: share of responses at the top score at "
                                                                    "most this (Meta-Rewarding saw saturation).")
    on_fail: Literal["continue", "stop"] = Field("continue", description="After a refused candidate: continue from "
                                                                         "the last promoted model, or stop the run.")

    @model_validator(mode="after")
    def _bounds(self) -> "GateCfg":
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError(f"min_length_ratio ({self.min_length_ratio}) must be below max_length_ratio "
                             f"({self.max_length_ratio})")
        return self


class EvalCfg(Section):
    probes: str = Field(str(RECIPES_DIR / "probes/default.jsonl"),
                        description="Drift probe set ({'id', 'prompt'}), sampled at eval.temperature.")
    capability_probes: str = Field(str(RECIPES_DIR / "probes/ifeval.jsonl"),
                                   description="IFEval-format probes (key, prompt, instruction_id_list, kwargs), "
                                               "answered greedily; never trained on.")
    pairwise_template: str = Field(str(RECIPES_DIR / "templates/pairwise.md"),
                                   description="Frozen-judge A/B template with {instruction}, {response_a}, {response_b}.")
    temperature: float = Field(1.0, ge=0, description="Drift probe sampling temperature (1: unbiased KL estimate).")
    max_tokens: int = Field(192, ge=8, description="Token budget of one drift probe response.")
    capability_max_tokens: int = Field(192, ge=8, description="Token budget of one capability probe response.")
    judge_max_tokens: int = Field(4, ge=1, description="Token budget of one pairwise judgment (the verdict is the "
                                                       "first token).")
    judge_prefill: str = Field("Winner:", description="Text each pairwise judgment starts with.")
    win_rate_probes: Literal["all", "drift", "capability"] = Field(
        "all", description="Which probes' answers the frozen judge compares for the win rate: both sets, the drift "
                           "probes only, or the capability probes only (two long judgments per probe: a CPU recipe "
                           "can spend them where they buy the most).")
    gate: GateCfg = Field(default_factory=GateCfg)
    shard_size: int = Field(64, ge=1, description="Probe generations per shard.")


class TrackingCfg(Section):
    wandb: bool = Field(False, description="Log to Weights & Biases (offline when no API key is set).")
    project: str = Field("selfreward", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    group: str | None = Field(None, description="W&B group: runs of one experiment (e.g. a sweep) shown together.")
    tags: list[str] = Field(default_factory=list, description="W&B tags of the loop's run.")


class LaunchCfg(Section):
    mode: Literal["inprocess", "subprocess"] = Field("inprocess",
                                                     description="Run stages in this process or one process each.")
    accelerate_config: str | None = Field(None, description="accelerate config for training (subprocess mode); "
                                                            "a name in recipes/accelerate/ or a path.")
    num_processes: int | None = Field(None, ge=1, description="Override the accelerate config's num_processes.")
    stop_within_s: float = Field(25.0, gt=0, description="After a stop signal (SLURM preemption), exit within "
                                                         "this many seconds: a shard that cannot finish in time "
                                                         "is abandoned and redone on resume.")
    gpus_per_node: int = Field(0, ge=0, description="SLURM shape: GPUs per node the jobs ask for (slurm/submit.sh "
                                                    "--gpus-per-node); 0 = CPU. model.tensor_parallel_size must "
                                                    "divide it.")
    train_nodes: int = Field(1, ge=1, description="SLURM shape: nodes of a train job (slurm/submit.sh --train-nodes); "
                                                  "more than 1 needs mode: subprocess and an accelerate_config.")


class Config(Section):
    run: RunCfg = Field(default_factory=RunCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    data_gen: DataGenCfg = Field(default_factory=DataGenCfg)
    judge: JudgeCfg = Field(default_factory=JudgeCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    sft: SftCfg = Field(default_factory=SftCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    tracking: TrackingCfg = Field(default_factory=TrackingCfg)
    launch: LaunchCfg = Field(default_factory=LaunchCfg)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.judge.pair_strategy == "anchored" and self.data_gen.anchor_responses < 1:
            raise ValueError("judge.pair_strategy: anchored needs data_gen.anchor_responses >= 1")
        if self.model.engine == "hf" and self.judge.mode == "sampled" and self.judge.structured:
            raise ValueError("judge.structured: structured outputs need model.engine: vllm "
                             "(set judge.structured: false, or judge.mode: logprob)")
        gpus, tp = self.launch.gpus_per_node, self.model.tensor_parallel_size
        if gpus and gpus % tp:
            raise ValueError(f"model.tensor_parallel_size: {tp} does not divide launch.gpus_per_node={gpus} (vLLM "
                             f"splits the model over tensor_parallel_size GPUs of one node)")
        nodes = self.launch.train_nodes
        if nodes > 1 and (self.launch.mode != "subprocess" or not self.launch.accelerate_config):
            raise ValueError(f"launch.train_nodes: {nodes} nodes need launch.mode: subprocess and a "
                             f"launch.accelerate_config")
        return self

    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# keys that change how a run is carried out, not what it produces: a resumed run may change them
OPERATIONAL = ("run.iterations", "run.output_dir", "run.oversight", "data_gen.shard_size", "judge.shard_size",
               "eval.shard_size", "eval.gate.on_fail", "train.save_steps", "tracking.", "launch.mode",
               "model.kv_cache_gib", "model.gpu_memory_utilization", "launch.gpus_per_node", "launch.train_nodes",
               "launch.stop_within_s")

# recipe keys renamed to TRL's names: an old key is an error that names the new one
RENAMED = {"train.batch_size": "train.per_device_train_batch_size",
           "train.grad_accum": "train.gradient_accumulation_steps",
           "train.epochs": "train.num_train_epochs"}

# token budgets that must leave room for a prompt inside model.max_model_len
TOKEN_BUDGETS = [("data_gen", "max_tokens"), ("data_gen", "prompt_max_tokens"), ("judge", "max_tokens"),
                 ("eval", "max_tokens"), ("eval", "capability_max_tokens"), ("eval", "judge_max_tokens"),
                 ("train", "max_length"), ("sft", "max_length")]

# (section, key) -> how the file must look; checked before any model loads
PATH_FIELDS = [("data_gen", "seeds"), ("judge", "constitution"), ("eval", "probes"), ("eval", "capability_probes"),
               ("eval", "pairwise_template")]


# (section, key) of dataset sources (datasource.DatasetSource): a local path is relative to the recipe
DATASET_FIELDS = [("data_gen", "dataset"), ("sft", "ift"), ("sft", "eft")]


def apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def _resolve_paths(data: dict, base: Path) -> None:
    for section, key in PATH_FIELDS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            data[section][key] = str((base / value).resolve())
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("ref"), str) and not model["ref"].startswith("embedded:"):
        local = base / Path(model["ref"]).expanduser()
        if model["ref"].startswith((".", "/", "~")) or local.exists():  # a directory next to the recipe
            model["ref"] = str(local.resolve())
    for section, key in DATASET_FIELDS:  # a local dataset file; a hub id (org/name) stays as given
        src = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        path = src.get("path") if isinstance(src, dict) else None
        if isinstance(path, str) and not Path(path).expanduser().is_absolute() and (
                path.startswith((".", "~")) or (base / path).exists() or Path(path).suffix in (".jsonl", ".json",
                                                                                             ".parquet")):
            src["path"] = str((base / Path(path).expanduser()).resolve())
    launch = data.get("launch")
    if isinstance(launch, dict) and isinstance(launch.get("accelerate_config"), str):
        name = launch["accelerate_config"]
        candidate = base / name
        if not candidate.exists() and not name.endswith((".yaml", ".yml")):
            candidate = RECIPES_DIR / "accelerate" / f"{name}.yaml"
        launch["accelerate_config"] = str(candidate.resolve())


def _format_error(origin: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "<root>"
    msg = first["msg"]
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if first["type"] == "value_error":  # a cross-field check: its message names the keys
        msg = str(first.get("ctx", {}).get("error", msg))
        return f"{origin}: {msg}{more}" if loc == "<root>" else f"{origin}: {loc}: {msg}{more}"
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",):
        msg = f"{msg} (got {first['input']!r})"
    return f"{origin}: {loc}: {msg}{more}"


def shipped_recipes() -> dict[str, tuple[Path, str]]:
    """Recipes installed with the package: name -> (path, one-line description from its second comment line)."""
    found = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        comments = [line.lstrip("# ").strip() for line in lines[:2] if line.startswith("#")]
        found[path.stem] = (path, comments[1] if len(comments) > 1 else "")
    return found


def find_recipe(name: str | Path) -> Path:
    """A recipe file as given, or a shipped recipe's bare name (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and stem in shipped:
        return shipped[stem][0]
    raise RecipeError(f"{name}: recipe not found (not a file, and not a shipped recipe: "
                      f"{', '.join(shipped) or 'none'})")


def load(path: str | Path, overrides: list[str] = (), offline_hub_ok: bool = False) -> Config:
    """Load, override, validate and check files. Raises RecipeError with a one-line message. `offline_hub_ok`
    (validate): a hub id that HF_HUB_OFFLINE=1 keeps from being fetched is checked for form only."""
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        apply_override(data, item)
    for old, new in RENAMED.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            raise RecipeError(f"{path}: {old}: renamed to {new} (TRL's name)")
    _resolve_paths(data, path.resolve().parent)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_error(str(path), e)) from None
    check_inputs(cfg, str(path), offline_hub_ok)
    return cfg


def check_inputs(cfg: Config, origin: str, offline_hub_ok: bool = False) -> None:
    """Files and model references the recipe names must exist and be usable; nothing is loaded."""
    from selfreward import constitution, models  # light: no torch at import

    for section, key in PATH_FIELDS:
        p = Path(getattr(getattr(cfg, section), key))
        if not p.is_file():
            raise RecipeError(f"{origin}: {section}.{key}: file not found: {p}")
    seeds = read_jsonl_field(cfg.data_gen.seeds, "instruction", origin, "data_gen.seeds")
    if len(seeds) < cfg.data_gen.fewshot:
        raise RecipeError(f"{origin}: data_gen.seeds: {cfg.data_gen.seeds} has {len(seeds)} instructions, "
                          f"fewer than data_gen.fewshot={cfg.data_gen.fewshot}")
    read_jsonl_field(cfg.eval.probes, "prompt", origin, "eval.probes")
    try:
        constitution.load(cfg.judge.constitution)
    except constitution.ConstitutionError as e:
        raise RecipeError(f"{origin}: judge.constitution: {cfg.judge.constitution}: {e}") from None
    _check_template(cfg.eval.pairwise_template, {"instruction", "response_a", "response_b"}, origin,
                    "eval.pairwise_template")
    try:
        models.check_ref(cfg.model.ref, offline_hub_ok)
        models.check_chat_template(cfg.model.ref)  # from the tokenizer files only; nothing is downloaded
    except models.ModelRefError as e:
        raise RecipeError(f"{origin}: model.ref: {e}") from None
    if cfg.launch.accelerate_config and not Path(cfg.launch.accelerate_config).is_file():
        raise RecipeError(f"{origin}: launch.accelerate_config: file not found: {cfg.launch.accelerate_config}")
    if cfg.launch.accelerate_config:
        _check_accelerate_config(cfg.launch.accelerate_config, origin)
    _check_constraints(cfg, origin)
    for section, key in TOKEN_BUDGETS:
        if section == "sft" and not cfg.sft.enabled:
            continue  # a section that does not run does not constrain the model
        budget = getattr(getattr(cfg, section), key)
        if budget >= cfg.model.max_model_len:
            raise RecipeError(f"{origin}: {section}.{key}: {budget} tokens do not fit in model.max_model_len="
                              f"{cfg.model.max_model_len} (the prompt needs room too)")
    _check_output_dir(cfg.run_dir(), origin)


def _check_constraints(cfg: Config, origin: str) -> None:
    """Instruction types must be lm-eval checkers that data_gen can attach; verification needs constrained prompts."""
    from selfreward import ifeval

    cons = cfg.data_gen.constraints
    if cfg.judge.verify == "ifeval" and cons.share == 0:
        raise RecipeError(f"{origin}: judge.verify: ifeval needs constrained prompts (data_gen.constraints.share > 0)")
    named = set(cfg.eval.gate.improvement + cfg.eval.gate.guards) & {"capability_trained", "capability_held_out"}
    if cons.share == 0 and not named:
        return
    try:
        known, attachable = set(ifeval.checkers()), set(ifeval.attachable())
    except ifeval.IFEvalError as e:
        raise RecipeError(f"{origin}: data_gen.constraints: {e}") from None
    for key in ("types", "hold_out_types"):
        for iid in getattr(cons, key):
            if iid not in known:
                raise RecipeError(f"{origin}: data_gen.constraints.{key}: unknown instruction type {iid!r} (lm-eval's "
                                  f"IFEval ids, such as punctuation:no_comma)")
            if key == "types" and iid not in attachable:
                raise RecipeError(f"{origin}: data_gen.constraints.types: {iid!r} needs text from the prompt's author "
                                  f"and cannot be attached to a generated prompt")


def _check_accelerate_config(path: str, origin: str) -> None:
    """ZeRO-3 shards the LoRA weights too: without gathering them at save, transformers writes an empty adapter
    (and a DeepSpeed checkpoint instead), which selfreward would then serve as the trained model."""
    try:
        launch = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{origin}: launch.accelerate_config: {path}: invalid YAML ({getattr(e, 'problem', e)})") \
            from None
    ds = launch.get("deepspeed_config") if isinstance(launch, dict) else None
    if isinstance(ds, dict) and launch.get("distributed_type") == "DEEPSPEED" and str(ds.get("zero_stage")) == "3" \
            and not ds.get("zero3_save_16bit_model"):
        raise RecipeError(f"{origin}: launch.accelerate_config: {path}: ZeRO-3 needs deepspeed_config."
                          f"zero3_save_16bit_model: true (the LoRA adapter is gathered from its shards to be saved)")


def _check_output_dir(run_dir: Path, origin: str) -> None:
    """The run directory must exist as a directory or be creatable; nothing is left behind by the check."""
    run_dir = Path(os.path.abspath(run_dir))
    if run_dir.exists():
        if not run_dir.is_dir():
            raise RecipeError(f"{origin}: run.output_dir: {run_dir} exists and is not a directory")
        return
    ancestor = run_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is not a directory")
        os.rmdir(tempfile.mkdtemp(prefix=".selfreward-check-", dir=ancestor))
    except OSError as e:
        raise RecipeError(f"{origin}: run.output_dir: cannot create {run_dir} "
                          f"({e.strerror or e}{': ' + str(ancestor) if e.strerror else ''})") from None


def read_jsonl_field(path: str, field: str, origin: str, key: str) -> list[dict]:
    """Rows with a unique non-empty string 'id' and a non-empty string `field`."""
    rows, ids = [], set()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{origin}: {key}: {path} is not UTF-8 text") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RecipeError(f"{origin}: {key}: {path} line {n} is not valid JSON") from None
        for name in ("id", field):
            if not isinstance(row, dict) or not isinstance(row.get(name), str) or not row[name].strip():
                raise RecipeError(f"{origin}: {key}: {path} line {n} has no non-empty {name!r} string")
        if row["id"] in ids:
            raise RecipeError(f"{origin}: {key}: {path} line {n} repeats the id {row['id']!r}")
        ids.add(row["id"])
        rows.append(row)
    if not rows:
        raise RecipeError(f"{origin}: {key}: {path} is empty")
    return rows


def _check_template(path: str, names: set[str], origin: str, key: str) -> None:
    import string

    try:
        text = Path(path).read_text(encoding="utf-8")
        found = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except UnicodeDecodeError:
        raise RecipeError(f"{origin}: {key}: {path} is not UTF-8 text") from None
    except ValueError as e:
        raise RecipeError(f"{origin}: {key}: {path}: bad template ({e})") from None
    if found != names:
        want = ", ".join("{" + n + "}" for n in sorted(names))
        raise RecipeError(f"{origin}: {key}: {path} must use exactly the placeholders {want}, found "
                          f"{sorted(found) or 'none'}")


def identity(data: dict) -> dict:
    """A resolved config as a run is identified by it: files by content (a moved checkout is the same run),
    operational keys left out."""
    from selfreward.digests import file_digest

    data = json.loads(json.dumps(data))  # a deep copy
    for section, key in PATH_FIELDS:
        path = data.get(section, {}).get(key)
        if isinstance(path, str) and Path(path).is_file():
            data[section][key] = file_digest(path)
    from selfreward.datasource import path_identity

    for section, key in DATASET_FIELDS:
        src = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            src["path"] = path_identity(src["path"]) or src["path"]
    # keys added later leave the identity of a recipe that does not use them as it was
    dg = data.get("data_gen", {})
    if isinstance(dg, dict) and dg.get("source", "self_instruct") == "self_instruct":
        dg.pop("source", None)
        dg.pop("dataset", None)
    if isinstance(dg, dict) and dg.get("pool") == "replace":
        dg.pop("pool")
    if not (data.get("sft") or {}).get("enabled"):
        data.pop("sft", None)
    if isinstance(dg, dict) and not (dg.get("constraints") or {}).get("share"):
        dg.pop("constraints", None)
    judge = data.get("judge")
    if isinstance(judge, dict) and judge.get("verify", "none") == "none":
        for key in ("verify", "reward", "verifier_weight", "verify_control"):
            judge.pop(key, None)
    for op in OPERATIONAL:
        *parents, key = op.rstrip(".").split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return data


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def from_run_yaml(path: str | Path) -> Config:
    return Config.model_validate(yaml.safe_load(Path(path).read_text()))
