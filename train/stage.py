"""train: DPO + LoRA on the iteration's pairs, in this process or through `accelerate launch -m selfreward.train`.

Contract: reads judge's `pairs.jsonl` and the parent adapter (lineage); writes `adapter/` (PEFT safetensors,
the trained adapter only, its base named by the recipe's model.ref), `log_history.jsonl` (TRL's per-step
logs: loss, rewards/margins, ...) and `checkpoints/` (for resume). Zero pairs or a non-finite loss end the iteration
without promotion.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import launch
from selfreward.config import Config
from selfreward.exits import IterationEnded
from selfreward.lifecycle import Outputs, Stage
from selfreward.records import read_jsonl


class NoPairs(IterationEnded):
    """Zero usable pairs: there is nothing to train on, and the iteration ends without promotion."""


def _world(cfg: Config, iter_dir: Path) -> dict:
    # processes, batch size and accumulation together fix the effective batch
    return {"world_size": launch.world_size(cfg)}


def run(cfg: Config, iter_dir: Path) -> Outputs:
    if not read_jsonl(iter_dir / "judge" / "pairs.jsonl"):
        raise NoPairs(f"iteration {iter_dir.name}: zero usable pairs (see {iter_dir / 'judge' / 'stats.json'})")
    from selfreward.train.dpo import train

    metrics = train(cfg, iter_dir)
    return Outputs({"adapter": iter_dir / "train" / "adapter",
                    "log_history": iter_dir / "train" / "log_history.jsonl"}, metrics)


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(key):
        return "n/a" if x.get(key) is None else f"{x[key]:.4f}"

    return (f"train: {x['pairs']} pairs, {x['steps']} steps, loss {f('loss_first')} -> {f('loss_last')}, "
            f"reward accuracy {f('reward_accuracy_mean')}, {x['samples_per_s']} samples/s "
            f"({x.get('tokens_per_s') or 'n/a'} tokens/s) "
            f"on {x['world_size']} process(es), {x.get('precision', 'fp32')}")


STAGE = Stage("train", reads=("train", "model", "run.seed"), run=run, summary=summary, upstream=("judge",),
              lineage=True, extra=_world)
