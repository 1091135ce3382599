"""Patches to a library's internals: each is written for one version of the library, refuses any other, and can be
turned off.

Contract:
- `check(patch, module, written_for, opt_out)` is the first thing every patch's `install()` does, before it imports
  the library. It returns False when the environment variable `opt_out` is "1" (nothing is patched; the library's
  own code runs), True when the distribution that provides the import `module` is installed at exactly
  `written_for`, and otherwise raises `PatchVersionError`: one line naming the patch, both versions and the opt-out,
  which the CLI prints before exiting 2 (`launch.exit_code_of`; a stage child reports it through `error.json`).
- The rule is the exact version (a local label such as vLLM's `+cpu` aside), not a range such as the same
  major.minor. The patches replace private names (`_apply_sync`, the CPU punica kernels, the sampler's
  `apply_top_k_top_p`, TRL's `_ChunkedLogProbFunction` and `_use_triton`) that carry no compatibility promise,
  even between patch releases, and a patch that lands on a changed function computes wrong numbers instead of
  failing. pyproject.toml pins these libraries at the same versions; moving a pin means rerunning the tests that
  compare each patch with the library's own result (tests/unit/test_vllm_cpu_ops.py,
  tests/integration/test_lora_kernels.py, tests/unit/test_cpu_logprob.py) and then moving `written_for` here too.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os


class PatchVersionError(RuntimeError):
    """A patch was asked to change a library version it was not written for; the message is one line."""


@functools.lru_cache(maxsize=1)
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def installed_version(module: str) -> tuple[str, str] | None:
    """(distribution, version) of what provides the import `module` (vLLM's CPU build is `vllm-cpu`), or None."""
    for dist in _providers().get(module, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check(patch: str, module: str, written_for: str, opt_out: str) -> bool:
    """Whether `patch` may be installed: see the module's contract."""
    if os.environ.get(opt_out) == "1":
        return False
    found = installed_version(module)
    if found is None:
        raise PatchVersionError(f"{patch} patches {module} {written_for}, which is not installed")
    dist, version = found
    if version.split("+", 1)[0] != written_for:
        raise PatchVersionError(
            f"{patch} was written for {module} {written_for} and refuses to patch {dist} {version}: install "
            f"{dist}=={written_for} (what pyproject.toml pins), or set {opt_out}=1 to run {module}'s own code")
    return True
