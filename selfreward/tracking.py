"""metrics.jsonl (always, the source of truth) and Weights & Biases (when tracking.wandb is on).

Contract: one metrics.jsonl line per (iteration, stage), replaced when a stage is redone. With W&B, one run
per run directory: its id is created once and kept in `RUN/wandb_run_id` (a moved or requeued run continues
it), group/name/tags come from the recipe. Stage metrics are logged as `<stage>/<key>` against the
`iteration` axis; TRL's per-step logs as `train/curve/<key>` against `train/step` (counted across the loop;
`sft/curve/<key>` for the SFT bootstrap). Each iteration gets tables of sampled prompts, responses and
judgments (`judge/samples_table`), pairs (`judge/pairs_table`) and the gate's decision (`gate/decision`, with
`gate/passed`); each adapter (DPO's `iter-K`, the SFT bootstrap's `sft`) is a `model` artifact whose metadata
is its lineage. W&B's own step only counts log calls; the next one is kept in `RUN/wandb_step`, because an
offline run resumed by a new process restarts it at 0. Without an API key the run is offline, and one line
says how to `wandb sync` it.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from selfreward.artifacts import iteration_dir
from selfreward.records import dumps_jsonl, read_json, read_jsonl, write_atomic

RUN_ID_FILE = "wandb_run_id"
STEP_FILE = "wandb_step"
SAMPLE_PROMPTS = 8  # prompts per iteration whose responses and judgments go into judge/samples
SAMPLE_PAIRS = 16


def _scalars(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, bool)) and value is not None:
            out[f"{prefix}{key}"] = value
    return out


def run_id(run_dir: Path) -> str:
    """The run directory's W&B run id, created once (atomically: the first of racing processes wins).

    A directory that logged to W&B before the id was kept in a file used an id derived from its path: that
    one is adopted, so its run continues."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.exists():
        legacy = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        seen = any((Path(run_dir) / "wandb").glob(f"*-{legacy}"))
        fd, tmp = tempfile.mkstemp(prefix=f".{RUN_ID_FILE}.", dir=run_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write((legacy if seen else secrets.token_hex(8)) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # fails if another process created it first: its id stands
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


def _offline() -> bool:
    """Offline unless the user chose a mode or W&B has credentials (env or `wandb login`)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    import wandb

    return not wandb.login(prompt=False, verify=False)


class Tracker:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run_dir = Path(run_dir)
        self._wandb = None
        self._defined: set[str] = set()

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
        if self.cfg.tracking.wandb:
            self._wandb_log(iteration, stage, manifest, rows)

    def _init_wandb(self):
        import wandb

        t = self.cfg.tracking
        offline = _offline()
        rid = run_id(self.run_dir)
        if offline:  # W&B's own lines (and TRL asking an offline run for its URL) would say it all again
            wandb.termsetup(wandb.Settings(silent=True), None)
        self._wandb = wandb.init(project=t.project, entity=t.entity, group=t.group, tags=t.tags or None,
                                 name=self.cfg.run.name, id=rid, resume="allow", dir=str(self.run_dir),
                                 config=self.cfg.model_dump(mode="json"), mode="offline" if offline else None,
                                 settings=wandb.Settings(silent=offline))
        self._wandb.define_metric("iteration")
        for stage in ("train", "sft"):
            self._wandb.define_metric(f"{stage}/step")
            self._wandb.define_metric(f"{stage}/curve/*", step_metric=f"{stage}/step")
        if offline:
            why = "WANDB_MODE" if os.environ.get("WANDB_MODE") else "no API key"
            print(f"W&B run {rid} is offline ({why}); upload it with: "
                  f"wandb sync {self.run_dir / 'wandb'}/offline-run-*-{rid}", flush=True)
        return self._wandb

    def _emit(self, data: dict, axis: str | None) -> None:
        """run.log with W&B's step continued across processes; keys not seen yet are put on `axis`."""
        run = self._wandb or self._init_wandb()
        for key in data:
            if axis and key != axis and key not in self._defined:
                run.define_metric(key, step_metric=axis)
                self._defined.add(key)
        step_file = self.run_dir / STEP_FILE
        step = max(run.step, int(step_file.read_text()) if step_file.exists() else 0)
        run.log(data, step=step)
        write_atomic(step_file, f"{step + 1}\n")

    def _wandb_log(self, iteration: int, stage: str, manifest: dict, rows: list[dict]) -> None:
        iter_dir = iteration_dir(self.run_dir, iteration)
        data = {f"{stage}/{k}": v for k, v in _scalars(manifest["metrics"]).items()}
        extra = _judge_tables(iter_dir) if stage == "judge" else {}
        if stage == "eval" and iteration > 0 and (iter_dir / "eval" / "decision.json").exists():
            extra = _gate(read_json(iter_dir / "eval" / "decision.json"))
        assert not set(extra) & set(data), "a table would hide a metric of the same name"
        data.update(extra)
        self._emit({**data, "iteration": iteration}, "iteration")
        if stage in ("train", "sft"):  # DPO, and the SFT bootstrap whose adapter is M0
            self._curves(iteration, stage, iter_dir, rows)
            if (iter_dir / stage / "adapter").is_dir():
                self._adapter_artifact(iteration, stage, iter_dir, manifest)

    def _curves(self, iteration: int, stage: str, iter_dir: Path, rows: list[dict]) -> None:
        """TRL's per-step logs on their own axis: <stage>/step counts optimizer steps across iterations."""
        history = iter_dir / stage / "log_history.jsonl"
        if not history.exists():
            return
        offset = sum(r["metrics"].get("steps") or 0 for r in rows if r["stage"] == stage and r["iteration"] < iteration)
        for h in read_jsonl(history):
            point = {f"{stage}/curve/{k}": v for k, v in _scalars(h).items() if k != "step"}
            self._emit({**point, f"{stage}/curve/iteration": iteration, f"{stage}/step": offset + h["step"]}, None)

    def _adapter_artifact(self, iteration: int, stage: str, iter_dir: Path, manifest: dict) -> None:
        """The adapter with its lineage: the base model reference, its parent, the config hash and the data."""
        import wandb

        lineage = read_json(iter_dir / "lineage.json") if (iter_dir / "lineage.json").exists() else {}
        if stage == "sft":
            data = manifest["outputs"]["train"]["sha256"] if "outputs" in manifest else {}
            lineage, alias, key, sha = {}, "sft", "data_sha256", data.get("train.jsonl")
        else:
            judge = iter_dir / "judge" / "manifest.json"
            pairs = read_json(judge)["outputs"]["pairs"]["sha256"] if judge.exists() else {}
            alias, key, sha = f"iter-{iteration}", "pairs_sha256", pairs.get("pairs.jsonl")
        art = wandb.Artifact(f"{self.cfg.run.name}-adapter", type="model", metadata={
            "iteration": iteration, "stage": stage, "base_model": self.cfg.model.ref,
            "parent_iteration": lineage.get("parent_iteration"), "parent_adapter": lineage.get("parent_adapter"),
            "config_hash": manifest["config_hash"], key: sha, "metrics": _scalars(manifest["metrics"])})
        for f in sorted((iter_dir / stage / "adapter").iterdir()):  # add_dir would print a line of its own
            art.add_file(str(f), name=f.name)
        self._wandb.log_artifact(art, aliases=[alias])

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _judge_tables(iter_dir: Path) -> dict:
    """judge/samples: the first prompts' responses with every judgment (raw text, score, validity) and the
    pair role each response got; judge/pairs: the first pairs."""
    import wandb

    judge, gen = iter_dir / "judge", iter_dir / "data_gen"
    if not (judge / "judgments.jsonl").exists() or not (gen / "responses.jsonl").exists():
        return {}
    prompts = {p["id"]: p["instruction"] for p in read_jsonl(gen / "prompts.jsonl")} \
        if (gen / "prompts.jsonl").exists() else {}
    pairs = read_jsonl(judge / "pairs.jsonl") if (judge / "pairs.jsonl").exists() else []
    role = {}
    for p in pairs:
        prov = p["provenance"]
        role.update({prov.get("chosen_id"): "chosen", prov.get("rejected_id"): "rejected"})
    responses = {r["id"]: r for r in read_jsonl(gen / "responses.jsonl")}
    keep = list(dict.fromkeys(r["prompt_id"] for r in responses.values()))[:SAMPLE_PROMPTS]
    samples = wandb.Table(columns=["prompt_id", "prompt", "response_id", "response", "judgment", "judge_raw",
                                   "score", "valid", "invalid_reason", "pair_role"])
    for j in read_jsonl(judge / "judgments.jsonl"):
        if j["prompt_id"] in keep and j["response_id"] in responses:
            samples.add_data(j["prompt_id"], prompts.get(j["prompt_id"], ""), j["response_id"],
                             responses[j["response_id"]]["response"], j["judgment"], j["raw"], j["score"],
                             j["score"] is not None, j.get("invalid"), role.get(j["response_id"], ""))
    table = wandb.Table(columns=["prompt_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"])
    for p in pairs[:SAMPLE_PAIRS]:
        prov = p["provenance"]
        table.add_data(prov.get("prompt_id"), p["prompt"][0]["content"], p["chosen"][-1]["content"],
                       p["rejected"][-1]["content"], prov.get("chosen_score"), prov.get("rejected_score"))
    return {"judge/samples_table": samples, "judge/pairs_table": table}  # judge/pairs is the count


def _gate(decision: dict) -> dict:
    """The gate's decision: passed as 0/1 on the iteration axis, and every measure with its reason as a table."""
    import wandb

    table = wandb.Table(columns=["kind", "metric", "value", "bound", "passed", "reason"])
    table.add_data("decision", "", None, None, decision["passed"], "; ".join(decision["reasons"]))
    for b in decision.get("improvement", []):
        table.add_data("improvement", b["metric"], b["value"], b["bound"], b["significant"], b["reason"])
    for g in decision.get("guards", []):
        table.add_data("guard", g["metric"], g["value"], g["bound"], g["passed"], g["reason"])
    return {"gate/passed": int(decision["passed"]), "gate/decision": table}
