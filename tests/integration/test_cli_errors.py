"""Bad input through the real CLI: one line naming file and key, exit 2, an existing run directory untouched."""
import hashlib

import pytest

from selfreward import config, loop


def tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


@pytest.mark.parametrize("mutate, expected", [
    (lambda d, t: d["train"].update(betta=0.1), "train.betta: unknown key"),
    (lambda d, t: d["judge"].update(constitution="constitutions/gone.md"), "judge.constitution: file not found"),
    (lambda d, t: d["data_gen"].update(seeds="seeds/gone.jsonl"), "data_gen.seeds: file not found"),
    (lambda d, t: (t / "seeds" / "instructions.jsonl").write_text(""), "data_gen.seeds:"),
    (lambda d, t: d["model"].update(ref=str(t / "no-model")), "model.ref: model path"),
    (lambda d, t: d["data_gen"].update(n_responses=1), "data_gen.n_responses: Input should be greater than"),
    (lambda d, t: d["train"].update(beta=-0.5), "train.beta: Input should be greater than 0"),
    (lambda d, t: d["train"].update(dpo_overrides={"not_a_dpo_arg": 1}), "train.dpo_overrides:"),
    (lambda d, t: d["data_gen"].update(constraints={"share": 0.5, "types": ["punctuation:no_semicolon"]}),
     "data_gen.constraints.types: unknown instruction type 'punctuation:no_semicolon'"),
    (lambda d, t: d["data_gen"].update(constraints={"share": 0.5, "types": ["punctuation:no_comma"],
                                                    "hold_out_types": ["punctuation:no_comma"]}),
     "hold_out_types ['punctuation:no_comma'] are also training types"),
    (lambda d, t: d["data_gen"].update(constraints={"share": 1.5}),
     "data_gen.constraints.share: Input should be less than or equal to 1"),
    (lambda d, t: d["judge"].update(verify="ifeval"), "judge.verify: ifeval needs constrained prompts"),
    (lambda d, t: d["judge"].update(reward="verifier_first"),
     "judge: reward: verifier_first ranks by the verifier's verdicts, which need verify: ifeval"),
    # a stage impossible on this machine (no GPU here): vLLM's CPU KV cache larger than the memory available
    (lambda d, t: d["model"].update(engine="vllm", kv_cache_gib=100_000),
     "model.kv_cache_gib: 100000 GiB of vLLM CPU KV cache does not fit in this machine's"),
])
def test_bad_recipe_exits_before_loading_and_leaves_run_untouched(tmp_path, recipe_data, mutate, expected, cli, write_recipe):
    recipe_data.update(model={}, train={})
    good = write_recipe(tmp_path / "good.yaml", recipe_data)
    run_dir = loop.prepare_run_dir(config.load(good), force=False)  # an existing run directory
    before = tree_digest(run_dir)
    mutate(recipe_data, tmp_path)
    bad = write_recipe(tmp_path / "bad.yaml", recipe_data)
    for command in ("run", "validate"):
        out = cli(command, bad)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith(f"selfreward: error: {bad}: ") and expected in lines[0]
        assert "Traceback" not in out.stderr
    assert tree_digest(run_dir) == before


def test_changed_recipe_for_existing_run_is_refused(tmp_path, recipe_data, cli, write_recipe):
    good = write_recipe(tmp_path / "good.yaml", recipe_data)
    run_dir = loop.prepare_run_dir(config.load(good), force=False)
    before = tree_digest(run_dir)
    out = cli("run", good, "train.beta=0.3")
    assert out.returncode == 2
    assert "run.yaml: the run was started with a different config (changed: train.beta)" in out.stderr
    assert tree_digest(run_dir) == before


def test_validate_ok_and_status_of_missing_run(tmp_path, recipe_data, cli, write_recipe):
    good = write_recipe(tmp_path / "good.yaml", recipe_data)
    out = cli("validate", good)
    assert out.returncode == 0 and ": ok (1 iterations" in out.stdout
    out = cli("status", tmp_path / "nothing")
    assert out.returncode == 2 and "not a run directory" in out.stderr


def test_stage_job_before_the_baseline_is_one_line_and_computes_nothing(tmp_path, recipe_data, write_recipe):
    """`python -m selfreward.jobs stage R judge 1` (what stage.sbatch runs) before the baseline: judge needs M0's
    probe answers and eval M0's metrics. It used to judge every response, then fail with a traceback."""
    import subprocess
    import sys

    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    for stage in ("judge", "eval"):
        out = subprocess.run([sys.executable, "-m", "selfreward.jobs", "stage", str(recipe), stage, "1"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"run the baseline stage (iteration 0) before {stage}" in lines[0], lines
        assert not (tmp_path / "runs" / "t" / "iter_001").exists()


def test_jobs_info_config_only_leaves_the_library_checks_to_the_stage(tmp_path, recipe_data, write_recipe):
    """What stage.sbatch and loop.sbatch run first: `jobs info --shell --config-only` checks the recipe's form and
    files in under a second and leaves TRL's DPOConfig to the stage command after it, which must still refuse a
    bad `train.dpo_overrides` before it loads anything; without --config-only, info refuses it itself."""
    import subprocess
    import sys

    def jobs(*args):
        return subprocess.run([sys.executable, "-m", "selfreward.jobs", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    def one_line_error(out, expected):
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr, lines

    recipe_data["train"] = dict(recipe_data.get("train") or {}, betta=0.1)
    one_line_error(jobs("info", "--shell", "--config-only", write_recipe(tmp_path / "typo.yaml", recipe_data)),
                   "train.betta: unknown key")
    del recipe_data["train"]["betta"]
    recipe_data["train"]["dpo_overrides"] = {"not_a_dpo_arg": 1}
    bad = write_recipe(tmp_path / "bad.yaml", recipe_data)
    out = jobs("info", "--shell", "--config-only", bad)
    assert out.returncode == 0, out.stderr[-2000:]
    facts = dict(line.split("=", 1) for line in out.stdout.splitlines() if line and not line.startswith("#"))
    assert facts["RUN_NAME"] == recipe_data["run"]["name"] and facts["ITERATIONS"] == str(recipe_data["run"]["iterations"])
    one_line_error(jobs("info", "--shell", bad), "train.dpo_overrides:")
    one_line_error(jobs("stage", bad, "baseline", "0"), "train.dpo_overrides:")
    assert not (tmp_path / "runs").exists()
