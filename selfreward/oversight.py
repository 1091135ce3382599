"""Promotion decisions: the gate's, and a human's under `run.oversight: manual`.

Contract: `conclude` is the only writer of an iteration's outcome (`outcome.json`) and of `state.json`'s
promoted pointer and history; the pointer moves only for a promoted iteration. Under manual oversight the loop
calls `hold` after the gate, which writes `review.json` and stops the run; `review` (the `approve` / `reject`
commands) records who decided, when and why, and the next `selfreward run` continues from there. A human can
refuse a candidate the gate passed; a candidate the gate refused cannot be approved.
"""
from __future__ import annotations

import getpass
import time
from pathlib import Path

from selfreward import artifacts
from selfreward.config import RecipeError
from selfreward.records import read_json, write_json


def conclude(run_dir: Path, k: int, promoted: bool, reasons: list[str], decided: dict | None = None) -> None:
    """Move the promoted pointer (only for a promoted iteration), then record the iteration's outcome."""
    state = artifacts.read_state(run_dir)
    if promoted and state["promoted_iteration"] < k:
        state.update(promoted_iteration=k, adapter=artifacts.adapter_path(k))
    if not any(h["iteration"] == k for h in state["history"]):
        state["history"].append({"iteration": k, "promoted": promoted, "reasons": reasons, **(decided or {})})
    artifacts.write_state(run_dir, state)
    write_json(artifacts.iteration_dir(run_dir, k) / "outcome.json",
               {"iteration": k, "promoted": promoted, "reasons": reasons, **(decided or {})})


def hold(run_dir: Path, k: int, decision: dict) -> None:
    write_json(artifacts.iteration_dir(run_dir, k) / "review.json",
               {"iteration": k, "status": "pending", "gate_passed": decision["passed"],
                "gate_reasons": decision["reasons"]})


def awaiting(run_dir: Path) -> int | None:
    """The iteration waiting for a human decision, if any."""
    for review in sorted(Path(run_dir).glob("iter_[0-9][0-9][0-9]/review.json")):
        if not (review.parent / "outcome.json").exists():
            return artifacts.iteration_of(review.parent)
    return None


def review(run_dir: Path, k: int, approve: bool, reason: str, who: str | None = None) -> dict:
    """Record a human's decision on iteration k's gated candidate. Raises RecipeError (one line) on misuse."""
    run_dir = Path(run_dir)
    if artifacts.read_state(run_dir) is None:
        raise RecipeError(f"{run_dir}: not a run directory (no state.json)")
    iter_dir = artifacts.iteration_dir(run_dir, k)
    if (iter_dir / "outcome.json").exists():
        outcome = read_json(iter_dir / "outcome.json")
        raise RecipeError(f"iteration {k} is already decided ({'promoted' if outcome['promoted'] else 'not promoted'})")
    if not (iter_dir / "eval" / "decision.json").exists():
        raise RecipeError(f"iteration {k} has not reached its gate (no {iter_dir / 'eval' / 'decision.json'})")
    if not reason.strip():
        raise RecipeError("--reason must say why")
    decision = read_json(iter_dir / "eval" / "decision.json")
    if approve and not decision["passed"]:
        raise RecipeError(f"iteration {k} was refused by the gate ({'; '.join(decision['reasons'])}); "
                          f"it cannot be approved")
    decided = {"decided_by": who or getpass.getuser(), "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "decision": "approved" if approve else "rejected", "reason": reason}
    reasons = [f"{decided['decision']} by {decided['decided_by']}: {reason}"] + decision["reasons"]
    conclude(run_dir, k, approve, reasons, decided)
    return decided
