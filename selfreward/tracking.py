"""metrics.jsonl (always, the source of truth) and Weights & Biases (when tracking.wandb is on).

Contract: one metrics.jsonl line per (iteration, stage), replaced when a stage is redone; W&B runs offline
when no API key is set, one run per run directory (its id derived from the directory).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from selfreward.artifacts import iteration_dir
from selfreward.records import dumps_jsonl, read_jsonl, write_atomic


def _scalars(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, bool)) and value is not None:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run_dir = Path(run_dir)
        self._wandb = None

    def log(self, iteration: int, stage: str, manifest: dict) -> None:
        """One line per (iteration, stage): a stage skipped on rerun is not logged twice, a redone one
        (another config hash) replaces its line."""
        rows = read_jsonl(self.path) if self.path.exists() else []
        line = {"iteration": iteration, "stage": stage, "config_hash": manifest["config_hash"],
                "metrics": manifest["metrics"]}
        if line in rows:
            return
        rows = [r for r in rows if (r["iteration"], r["stage"]) != (iteration, stage)] + [line]
        write_atomic(self.path, dumps_jsonl(rows))
        metrics = manifest["metrics"]
        if self.cfg.tracking.wandb:
            self._wandb_log(iteration, stage, metrics)

    def _init_wandb(self):
        import wandb

        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # compute nodes without internet record, `wandb sync` later
        run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        self._wandb = wandb.init(project=self.cfg.tracking.project, entity=self.cfg.tracking.entity,
                                 name=self.cfg.run.name, id=run_id, resume="allow", dir=str(self.run_dir),
                                 config=self.cfg.model_dump(mode="json"))
        return self._wandb

    def _wandb_log(self, iteration: int, stage: str, metrics: dict) -> None:
        import wandb

        run = self._wandb or self._init_wandb()
        data = {f"{stage}/{k}": v for k, v in _scalars(metrics).items()}
        data["iteration"] = iteration
        iter_dir = iteration_dir(self.run_dir, iteration)
        if stage == "judge" and (iter_dir / "judge" / "pairs.jsonl").exists():
            table = wandb.Table(columns=["prompt", "chosen", "rejected", "chosen_score", "rejected_score"])
            for p in read_jsonl(iter_dir / "judge" / "pairs.jsonl")[:16]:
                table.add_data(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"],
                               p["provenance"]["chosen_score"], p["provenance"]["rejected_score"])
            data["judge/pairs_sample"] = table
        run.log(data, step=iteration)
        if stage == "train" and (iter_dir / "train" / "adapter").is_dir():
            art = wandb.Artifact(f"{self.cfg.run.name}-adapter", type="model",
                                 metadata={"iteration": iteration, **_scalars(metrics)})
            art.add_dir(str(iter_dir / "train" / "adapter"))
            run.log_artifact(art, aliases=[f"iter-{iteration}"])

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
