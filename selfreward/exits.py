"""Exit codes, and the exceptions a stage's process reports through one.

Contract:
- The exit codes of `selfreward`, `python -m selfreward.jobs` and `python -m selfreward.<stage>` are defined here
  and nowhere else: 0 done, 2 a user mistake (bad recipe, conflicting stage, a run directory locked by a live
  process, a library version that a patch of its internals was not written for), 3 the iteration ended without promotion, 75 (EX_TEMPFAIL) preempted, to be requeued by the
  scheduler (slurm/lib.sh spells 75 again: a shell script cannot import it).
- `StageConflict` and `patches.PatchVersionError` (exit 2), `IterationEnded` (3) and `stopping.Preempted` (75) cross the boundary of a stage
  child: `code_of` gives an exception's code, `exception_for` turns a child's recorded code back into the same
  exception, so the loop handles both launch modes alike.
- Imports nothing of selfreward but `stopping` and `patches` (both import nothing of selfreward): artifacts, the lifecycle, launch and the stages all raise these.
"""
from __future__ import annotations

from selfreward.patches import PatchVersionError
from selfreward.stopping import Preempted

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_ITERATION_ENDED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the sbatch script requeues the job on this code


class StageConflict(RuntimeError):
    """A stage's manifest exists with a different config hash and --force was not given."""


class IterationEnded(RuntimeError):
    """A stage found nothing to go on with (no prompts, no pairs, a NaN loss): the iteration ends unpromoted."""


CODES = ((StageConflict, EXIT_USER_ERROR), (PatchVersionError, EXIT_USER_ERROR), (IterationEnded, EXIT_ITERATION_ENDED),
         (Preempted, EXIT_PREEMPTED))
CARRIED = tuple(kind for kind, _ in CODES)  # the exceptions a stage child reports by its exit code


def code_of(error: BaseException) -> int | None:
    """The exit code that carries `error` out of a stage child; None for any other failure."""
    return next((code for kind, code in CODES if isinstance(error, kind)), None)


def exception_for(code: int, message: str, kind_name: str | None = None) -> BaseException | None:
    """The exception a stage child reported: by its recorded type name where that is one of CODES' kinds (two
    kinds share exit code 2), else the first kind with `code`; None for a code no exception carries."""
    kind = next((k for k, c in CODES if k.__name__ == kind_name), None) or next((k for k, c in CODES if c == code), None)
    return kind(message) if kind else None
