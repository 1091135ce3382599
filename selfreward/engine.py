"""One inference interface for data_gen, judge and eval.

`generate(requests, sampling) -> completions` and `score(requests) -> token logprobs`. `sampling` is one
`Sampling` for every request or a list with one per request (different kinds of work in one batch). A request
names the LoRA adapter to apply (None = the base model M0), so one engine serves every model of the lineage.
`VLLMEngine` is the default (the CPU build where there is no CUDA); `HFEngine` (transformers `generate`) is
the fallback where vLLM cannot be installed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    seed: int = 0
    adapter: str | None = None  # path of a PEFT LoRA adapter directory, or None for the base model
    prefill: str = ""  # text the assistant turn starts with; the completion continues it (and excludes it)


@dataclass(frozen=True)
class ScoreRequest:
    messages: list[dict]  # the conversation up to (not including) the scored assistant turn
    completion: str
    adapter: str | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 128
    top_logprobs: int = 0  # >0: also return the log-probabilities of the first token's top candidates
    score_token_ids: tuple[int, ...] = ()  # also return the first token's log-probabilities of exactly these ids
    regex: str | None = None  # structured output: the completion must match this regular expression (vLLM)
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks of fixed-length work)


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str
    first_token_logprobs: dict[str, float] | None = None  # decoded token -> logprob, when asked for
    score_logprobs: dict[int, float] | None = None  # token id -> first-token logprob, for score_token_ids


# tokens every engine of this process has read (prompts) and written (completions); a stage's share is the
# difference across its run (lifecycle.complete records it with the stage's wall time)
TOKENS = {"prompt": 0, "generated": 0}


def _per_request(requests: list, sampling: "Sampling | list[Sampling]") -> list["Sampling"]:
    """One Sampling per request: the same for all, or a list that gives each request its own."""
    if isinstance(sampling, Sampling):
        return [sampling] * len(requests)
    if len(sampling) != len(requests):
        raise ValueError(f"{len(sampling)} samplings for {len(requests)} requests")
    return list(sampling)


def _count(prompt: int, generated: int) -> None:
    TOKENS["prompt"] += prompt
    TOKENS["generated"] += generated


class EngineError(RuntimeError):
    """An engine cannot serve a request of this kind (for example structured outputs with transformers)."""


def _by_text(token_logprobs) -> dict[str, float]:
    """Decoded token -> logprob; several ids can decode alike, and the likelier one is kept."""
    table: dict[str, float] = {}
    for text, logprob in token_logprobs:
        table[text] = max(logprob, table.get(text, float("-inf")))
    return table


@dataclass
class _AdapterIds:
    base: str  # the model every adapter is served on: an adapter naming another base is refused
    ids: dict[str, int] = field(default_factory=dict)

    def get(self, path: str) -> int:
        key = os.path.abspath(path)
        if key not in self.ids:
            from selfreward.models import check_adapter_base

            check_adapter_base(key, self.base)
            self.ids[key] = len(self.ids) + 1
        return self.ids[key]


def kv_cache_misfit(model_cfg) -> str | None:
    """On a machine without a CUDA GPU, vLLM allocates `model.kv_cache_gib` of CPU memory for its KV cache at start:
    a cache larger than the memory available now cannot be allocated, so the recipe is refused before any model
    loads (None when it fits, or when vLLM does not run on this CPU)."""
    if model_cfg.engine != "vllm":
        return None
    import torch

    if torch.cuda.is_available():
        return None  # on a GPU the cache is sized by model.gpu_memory_utilization
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(meminfo["MemAvailable"].split()[0]) / 2**20  # kB -> GiB
    except (OSError, KeyError, ValueError):
        return None  # not Linux: nothing to compare with
    if model_cfg.kv_cache_gib < available:
        return None
    return (f"{model_cfg.kv_cache_gib} GiB of vLLM CPU KV cache does not fit in this machine's {available:.1f} GiB of "
            f"available memory; lower it (the shipped CPU recipes use 2)")


class VLLMEngine:
    def __init__(self, model_path: str, cfg, max_lora_rank: int = 64):
        # the engine core runs in this process: no spawn of a second interpreter, one copy of the weights, and
        # the caller's `if __name__ == "__main__"` discipline does not matter
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        from vllm import LLM
        from vllm.platforms import current_platform

        cpu_ops = {}
        if current_platform.is_cpu():  # each patch checks vLLM's version and its own opt-out ($SELFREWARD_STOCK_*)
            from selfreward import vllm_cpu_lora, vllm_cpu_ops

            vllm_cpu_lora.install()
            if vllm_cpu_ops.install():
                cpu_ops = vllm_cpu_ops.llm_kwargs()
        from selfreward.precision import inference_dtype

        self.dtype = inference_dtype(cfg.dtype)
        self.llm = LLM(model=model_path, dtype=self.dtype, max_model_len=cfg.max_model_len,
                       trust_remote_code=cfg.trust_remote_code, enable_lora=True, max_lora_rank=max_lora_rank,
                       max_loras=2, seed=0, tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization,
                       # the N samples of a prompt (and the k judgments of a response) share its prefill;
                       # each sample still follows its own seed (tests/integration/test_engines.py). The cache is
                       # emptied before every call (_fresh_cache), so what a call computes never depends on
                       # earlier calls: a resumed run recomputes its shards bit for bit
                       enable_prefix_caching=True,
                       # a chunked prefill of a seeded request rewinds its generator's offset, which CPU
                       # generators cannot do ("CPU Generator does not use offset"); whole prefills avoid it
                       enable_chunked_prefill=False, max_num_batched_tokens=max(8192, cfg.max_model_len),
                       **cpu_ops)
        self.tokenizer = self.llm.get_tokenizer()
        self._adapters = _AdapterIds(model_path)
        self.model_path, self.cfg = model_path, cfg

    def _fresh_cache(self) -> None:
        """Share prefills within one call only. Across calls, a cached prefix (the chat template's system turn,
        a constitution) would carry the bf16 rounding of whichever earlier batch computed it, so a shard's
        results would depend on which shards ran before it in this process, and a resumed run would differ."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not empty its prefix cache (requests still running?)")

    def _lora(self, path: str | None):
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(os.path.basename(os.path.dirname(os.path.abspath(path))) or "adapter",
                           self._adapters.get(path), os.path.abspath(path))

    def _prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[Request], sampling: Sampling | list[Sampling]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not requests:
            return []
        samplings = _per_request(requests, sampling)
        self._fresh_cache()
        params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=r.seed,
                                 logprobs=s.top_logprobs or None, logprob_token_ids=list(s.score_token_ids) or None,
                                 structured_outputs=StructuredOutputsParams(regex=s.regex) if s.regex else None,
                                 ignore_eos=s.ignore_eos) for r, s in zip(requests, samplings)]
        outputs = self.llm.generate([self._prompt(r.messages) + r.prefill for r in requests], params, use_tqdm=False,
                                    lora_request=[self._lora(r.adapter) for r in requests])
        result = []
        for o, s in zip(outputs, samplings):
            c = o.outputs[0]
            _count(len(o.prompt_token_ids or ()), len(c.token_ids))
            first = scores = None
            if s.top_logprobs and c.logprobs:
                first = _by_text((lp.decoded_token, lp.logprob) for lp in c.logprobs[0].values())
            if s.score_token_ids and c.logprobs:
                scores = {t: c.logprobs[0][t].logprob for t in s.score_token_ids if t in c.logprobs[0]}
            result.append(Completion(c.text, len(c.token_ids), c.finish_reason or "", first, scores))
        return result

    def score(self, requests: list[ScoreRequest]) -> list[list[float]]:
        """Log-probability of each completion token under the requested model (teacher forcing), from vLLM's
        prompt log-probabilities of the already loaded weights: base and LoRA requests in one batch.

        The token ids are built as transformers scoring builds them (chat head and completion tokenised apart),
        so the two engines score the same tokens. On the CPU build, prompt log-probabilities with LoRA requests
        are served by `selfreward.vllm_cpu_lora` (vLLM's own CPU ops fail on them, vllm-project/vllm#29955).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        self._fresh_cache()
        prompts, tails = [], []
        for r in requests:
            head_ids, tail_ids = _score_ids(self.tokenizer, r)
            prompts.append(TokensPrompt(prompt_token_ids=head_ids + tail_ids))
            tails.append(tail_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(prompts, params, use_tqdm=False,
                                    lora_request=[self._lora(r.adapter) for r in requests])
        result = []
        for o, tail in zip(outputs, tails):
            ids, plp = o.prompt_token_ids, o.prompt_logprobs
            _count(len(ids), 0)
            start = len(ids) - len(tail)
            result.append([plp[i][ids[i]].logprob for i in range(start, len(ids))])
        return result


def _score_ids(tokenizer, r: ScoreRequest) -> tuple[list[int], list[int]]:
    """The chat head up to the assistant turn and the completion, tokenised apart (both engines score these)."""
    head = tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
    return (tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(r.completion, add_special_tokens=False)["input_ids"])


class HFEngine:
    """transformers `generate`, one request at a time so each request's seed fully determines its sample."""

    def __init__(self, model_path: str, cfg):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from selfreward.precision import inference_dtype

        self.dtype = inference_dtype(cfg.dtype)
        dtype = getattr(torch, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                         trust_remote_code=cfg.trust_remote_code).eval()
        self.model = self.base
        self._adapters = _AdapterIds(model_path)

    def _use(self, adapter: str | None):
        from peft import PeftModel

        if adapter is None:
            return self.base if self.model is self.base else self.model.get_base_model()
        name = f"a{self._adapters.get(adapter)}"
        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, adapter, adapter_name=name).eval()
        elif name not in self.model.peft_config:
            self.model.load_adapter(adapter, adapter_name=name)
        self.model.set_adapter(name)
        self.model.base_model.enable_adapter_layers()
        return self.model

    def _call(self, adapter, fn):
        model = self._use(adapter)
        if adapter is None and self.model is not self.base:
            with self.model.disable_adapter():
                return fn(model)
        return fn(model)

    def generate(self, requests: list[Request], sampling: Sampling | list[Sampling]) -> list[Completion]:
        import torch

        samplings = _per_request(requests, sampling)
        if any(s.regex for s in samplings):
            raise EngineError("structured outputs need model.engine: vllm (transformers generate has none); "
                              "set judge.structured: false or judge.mode: logprob")
        out = []
        for r, sampling in zip(requests, samplings):
            text = self.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text + r.prefill, add_special_tokens=False, return_tensors="pt")
            kwargs = dict(max_new_tokens=sampling.max_tokens, pad_token_id=self.tokenizer.eos_token_id,
                          output_logits=True, return_dict_in_generate=True)
            if sampling.ignore_eos:
                kwargs["min_new_tokens"] = sampling.max_tokens
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False)

            def sample(model):
                # seeded once the adapter is loaded: PEFT draws a new adapter's initial LoRA weights from the
                # global RNG, so seeding before would change the first sample of each adapter in a process
                torch.manual_seed(r.seed)
                return model.generate(**ids, **kwargs)

            with torch.no_grad():
                gen = self._call(r.adapter, sample)
            new = gen.sequences[0, ids["input_ids"].shape[1]:].tolist()
            _count(ids["input_ids"].shape[1], len(new))
            finished = bool(new) and new[-1] == self.tokenizer.eos_token_id
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            first = scores = None
            logp = torch.log_softmax(gen.logits[0][0].float(), dim=-1)  # raw, like vLLM's logprobs
            if sampling.top_logprobs:
                top = torch.topk(logp, sampling.top_logprobs)
                first = _by_text((self.tokenizer.decode([t]), lp)
                                 for lp, t in zip(top.values.tolist(), top.indices.tolist()))
            if sampling.score_token_ids:
                scores = {t: logp[t].item() for t in sampling.score_token_ids}
            out.append(Completion(text, len(new), "stop" if finished else "length", first, scores))
        return out

    def score(self, requests: list[ScoreRequest]) -> list[list[float]]:
        import torch

        result = []
        for r in requests:
            head_ids, tail_ids = _score_ids(self.tokenizer, r)
            ids = torch.tensor([head_ids + tail_ids])
            _count(ids.shape[1], 0)
            with torch.no_grad():
                logits = self._call(r.adapter, lambda m: m(input_ids=ids).logits)
            logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            token_lp = logp.gather(1, targets[:, None])[:, 0]
            result.append(token_lp[len(head_ids) - 1:].tolist())
        return result


_ENGINES: dict[tuple, object] = {}


def for_config(cfg):
    """The process's engine for the run's base model M0 (every adapter of the lineage is served on top)."""
    from selfreward import models

    path = models.resolve(cfg.model.ref)
    key = (cfg.model.engine, path)
    if key not in _ENGINES:
        if cfg.model.engine == "vllm":
            # vLLM accepts only these ranks as max_lora_rank; adapters of any rank up to it are served
            rank = next(r for r in (16, 32, 64, 128, 256, 320, 512) if r >= cfg.train.lora_r)
            _ENGINES[key] = VLLMEngine(path, cfg.model, max_lora_rank=rank)
        else:
            _ENGINES[key] = HFEngine(path, cfg.model)
    return _ENGINES[key]


def seed_for(*parts) -> int:
    """A stable per-request seed: a row's sample does not depend on batch, shard or resume."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF
