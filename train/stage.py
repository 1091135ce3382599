"""train: DPO + LoRA on the iteration's pairs, in this process or through `accelerate launch -m train`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from selfreward import artifacts
from selfreward.config import Config
from selfreward.records import read_json, read_jsonl


class NoPairs(artifacts.IterationEnded):
    """Zero usable pairs: there is nothing to train on, and the iteration ends without promotion."""


def stage_config(cfg: Config, iter_dir: Path) -> dict:
    t = cfg.train.model_dump(mode="json")
    t.pop("save_steps")  # where checkpoints are cut does not change the result
    upstream = read_json(iter_dir / "judge" / "manifest.json")["config_hash"]
    return {"train": t, "judge": upstream, "seed": cfg.run.seed, "model": cfg.model.ref,
            "lineage": artifacts.lineage_config(iter_dir), "world_size": _world_size(cfg)}


def _world_size(cfg: Config) -> int:
    """Processes training runs on: with batch size and accumulation it fixes the effective batch."""
    if cfg.launch.mode != "subprocess" or not cfg.launch.accelerate_config:
        return 1
    import yaml

    launch = yaml.safe_load(Path(cfg.launch.accelerate_config).read_text()) or {}
    return cfg.launch.num_processes or int(launch.get("num_processes", 1))


def run(cfg: Config, iter_dir: Path, force: bool = False) -> dict:
    out_dir = iter_dir / "train"
    config = stage_config(cfg, iter_dir)
    done = artifacts.existing(out_dir, config, force)
    if done:
        return done
    if not read_jsonl(iter_dir / "judge" / "pairs.jsonl"):
        raise NoPairs(f"iteration {iter_dir.name}: zero usable pairs (see {iter_dir / 'judge' / 'stats.json'})")
    if cfg.launch.mode == "subprocess":
        _launch(cfg, iter_dir, force)
        return read_json(out_dir / "manifest.json")
    return run_local(cfg, iter_dir, config)


def run_local(cfg: Config, iter_dir: Path, config: dict | None = None) -> dict:
    from train.dpo import train

    started = time.time()
    config = config or stage_config(cfg, iter_dir)
    metrics = train(cfg, iter_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    return artifacts.write_manifest(iter_dir / "train", "train", config, {"adapter": iter_dir / "train" / "adapter"},
                                    metrics, started)


def launch_command(cfg: Config, iter_dir: Path, force: bool) -> list[str]:
    stage_args = ["-m", "train", str(iter_dir.parent), str(artifacts.iteration_of(iter_dir))]
    stage_args += ["--force"] if force else []
    if not cfg.launch.accelerate_config:
        return [sys.executable, *stage_args]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.launch.accelerate_config]
    if cfg.launch.num_processes:
        cmd += ["--num_processes", str(cfg.launch.num_processes)]
    return cmd + stage_args


def _launch(cfg: Config, iter_dir: Path, force: bool) -> None:
    cmd = launch_command(cfg, iter_dir, force)
    print("+ " + " ".join(cmd), flush=True)
    artifacts.run_child(cmd, iter_dir / "train")


def summary(m: dict) -> str:
    x = m["metrics"]

    def f(key):
        return "n/a" if x.get(key) is None else f"{x[key]:.4f}"

    return (f"train: {x['pairs']} pairs, {x['steps']} steps, loss {f('loss_first')} -> {f('loss_last')}, "
            f"reward accuracy {f('reward_accuracy_mean')}, {x['samples_per_s']} samples/s "
            f"on {x['world_size']} process(es)")
