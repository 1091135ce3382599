"""`selfreward eval RUN --iteration K --ifeval FILE`: an iteration's model on an IFEval-format file, outside the loop.

Contract: iteration K's model (0 = M0, with the SFT bootstrap's adapter when the run has one) answers every
prompt of the file greedily, through the run's engine and the eval stage's capability probes code; the answers
with their per-prompt verdicts go to `iter_K/eval/ifeval-<file stem>/responses.jsonl` (sharded, so a stopped
run resumes) and the four standard accuracies with the constant-answer floor to `scores.json`. A missing run
directory, an iteration without a trained adapter or an unreadable file is a RecipeError (one line, exit 2)
before any model loads. Nothing of the run's own stages, manifests or state changes. Beside the loop, the
only core module that imports a stage package (the eval stage alone); only the CLI imports it.
"""
from __future__ import annotations

from pathlib import Path

from selfreward import artifacts
from selfreward.config import RecipeError, from_run_yaml
from selfreward.records import write_json, write_jsonl


def evaluate_ifeval(run_dir: Path, k: int, path: Path, max_tokens: int | None = None) -> dict:
    """`selfreward eval RUN --iteration K --ifeval FILE`: iteration K's model (0 = M0) answers an IFEval-format
    file greedily; responses and the four standard accuracies go under iter_K/eval/ifeval-<file stem>/."""
    from selfreward import engine as engines
    from selfreward.eval import capability, probes

    run_dir = Path(run_dir)
    if not (run_dir / "run.yaml").exists():
        raise RecipeError(f"{run_dir}: not a run directory (no run.yaml)")
    adapter = artifacts.m0_adapter(run_dir)
    if k > 0:
        adapter_dir = artifacts.iteration_dir(run_dir, k) / "train" / "adapter"
        if not (adapter_dir / "adapter_config.json").exists():
            raise RecipeError(f"iteration {k} has no trained adapter ({adapter_dir})")
        adapter = str(adapter_dir.resolve())
    if not Path(path).is_file():
        raise RecipeError(f"{path}: IFEval file not found")
    try:
        rows = capability.read_ifeval(path)
    except capability.CapabilityError as e:
        raise RecipeError(str(e)) from None
    cfg = from_run_yaml(run_dir / "run.yaml")
    out_dir = artifacts.iteration_dir(run_dir, k) / "eval" / f"ifeval-{Path(path).stem}"
    answers = probes.capability_responses(engines.for_config(cfg), cfg, adapter, out_dir / "shards",
                                          f"iter {k} IFEval", rows, max_tokens)
    scored = capability.score(rows, [a["response"] for a in answers])
    result = {"file": str(Path(path).resolve()), "iteration": k, "model": adapter or cfg.model.ref,
              **{key: v for key, v in scored.items() if key != "per_prompt"}, "floor": capability.floor(rows)}
    write_jsonl(out_dir / "responses.jsonl", [{**a, **scored["per_prompt"][a["id"]]} for a in answers])
    write_json(out_dir / "scores.json", result)
    return result
