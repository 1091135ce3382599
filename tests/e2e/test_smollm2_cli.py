"""The embedded SmolLM2 through the CLI: two iterations (M1 generates, judges and is compared through its
adapter), a rerun that skips everything, a kill -9 and resume."""
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from selfreward.records import SHARD_HEADER, read_json, read_jsonl

pytestmark = pytest.mark.e2e
ARTIFACTS = ["iter_000/eval/probes.jsonl", "iter_000/eval/capability.jsonl", "iter_001/lineage.json",
             "iter_001/data_gen/prompts.jsonl", "iter_001/data_gen/responses.jsonl", "iter_001/judge/judgments.jsonl",
             "iter_001/judge/pairs.jsonl", "iter_001/judge/stats.json", "iter_001/judge/known_answer.jsonl",
             "iter_001/train/adapter/adapter_model.safetensors", "iter_001/train/adapter/adapter_config.json",
             "iter_001/eval/probes.jsonl", "iter_001/eval/capability.jsonl", "iter_001/eval/metrics.json",
             "iter_001/eval/decision.json", "iter_001/outcome.json"]


def cmd(recipe, *overrides):
    return [sys.executable, "-m", "selfreward.cli", "run", str(recipe), *overrides]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, recipes_dir, write_recipe):
    tmp = tmp_path_factory.mktemp("e2e")
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()
    (tmp / "probes.jsonl").write_text("\n".join(probes[:6] + probes[-2:]) + "\n")
    ifeval = (recipes_dir / "probes" / "ifeval.jsonl").read_text().splitlines()
    (tmp / "ifeval.jsonl").write_text("\n".join(ifeval[:10]) + "\n")
    data = {
        "run": {"name": "a", "output_dir": str(tmp / "runs"), "iterations": 2, "seed": 0},
        # 96 tokens: at 64, most answers of a promoted 135M model can end truncated, and iteration 2 then has
        # no prompt with a complete answer to prefer (zero pairs ends it before train), depending on bf16 rounding
        "data_gen": {"num_prompts": 8, "prompts_per_round": 24, "n_responses": 3, "max_tokens": 96,
                     "shard_size": 6},
        # logprob judging is bit-reproducible across processes; sampled judging with structured outputs is not
        # on a bf16 CPU (vLLM schedules requests as their grammars compile, and batch composition changes the
        # bf16 sums): tests/integration/test_judge_modes.py covers the sampled mode
        "judge": {"mode": "logprob", "shard_size": 12, "known_answer_pairs": 8},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "max_length": 256},
        # a permissive gate (any win rate above 0 is evidence; length and KL guarded) so that M1 is promoted and
        # iteration 2 runs from its adapter: what the gate refuses is tested in tests/integration/test_gate.py
        "eval": {"probes": str(tmp / "probes.jsonl"), "capability_probes": str(tmp / "ifeval.jsonl"),
                 "max_tokens": 64, "capability_max_tokens": 48, "shard_size": 18,  # one batch of 8 + 10 answers
                 "gate": {"min_win_rate": 0.0, "improvement": ["win_rate"], "guards": ["length", "kl"]}},
    }
    return write_recipe(tmp / "recipe.yaml", data)


@pytest.fixture(scope="module")
def run_a(recipe):
    out = subprocess.run(cmd(recipe), capture_output=True, text=True, cwd=recipe.parent, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    return recipe.parent / "runs" / "a", out.stdout


def test_full_iteration_artifacts(run_a):
    run_dir, stdout = run_a
    for rel in ARTIFACTS:
        assert (run_dir / rel).is_file(), rel
    prompts = read_jsonl(run_dir / "iter_001/data_gen/prompts.jsonl")
    responses = read_jsonl(run_dir / "iter_001/data_gen/responses.jsonl")
    judgments = read_jsonl(run_dir / "iter_001/judge/judgments.jsonl")
    assert len(prompts) == 8 and len({p["instruction"] for p in prompts}) == 8
    assert len(responses) == 24 and {r["prompt_id"] for r in responses} == {p["id"] for p in prompts}
    assert len(judgments) == 24
    stats = read_json(run_dir / "iter_001/judge/stats.json")
    assert stats["valid"] == sum(j["score"] is not None for j in judgments)
    assert all(j["score"] is None or 0 <= j["score"] <= 5 for j in judgments)
    assert stats["valid_rate"] >= 0.9, stats["invalid_reasons"]
    assert all(j["invalid"] == "low_score_mass" for j in judgments if j["score"] is None)
    assert all(0.5 <= j["score_mass"] <= 1 for j in judgments if j["score"] is not None)
    assert all(j["constitution_sha256"] == stats["constitution"]["sha256"] for j in judgments)
    known = read_jsonl(run_dir / "iter_001/judge/known_answer.jsonl")
    assert len(known) == 8 and stats["known_answer"]["n"] + stats["known_answer"]["unjudged"] == 8
    assert {k["kind"] for k in known} == {"truncate", "shuffle", "other_prompt", "repeat"}
    assert len(read_jsonl(run_dir / "iter_001/judge/consistency.jsonl")) == 8  # M0's 8 probe answers
    assert stats["consistency"]["kendall_tau"] is None  # no previous judge in iteration 1
    for key in ("top_score_share", "tie_rate", "pair_yield", "length_bias_spearman", "truncated_pair_share"):
        assert key in stats

    from datasets import load_dataset

    pairs = load_dataset("json", data_files=str(run_dir / "iter_001/judge/pairs.jsonl"), split="train")
    assert len(pairs) == stats["pairs"] > 0
    for row in pairs:
        prov = row["provenance"]
        assert prov["chosen_score"] > prov["rejected_score"] and not prov["chosen_truncated"]
        assert prov["strategy"]["selection"] == "best_worst"
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert len(prov["constitution_sha256"]) == 64 and prov["judge"] == "embedded:smollm2-135m-instruct"

    for stage in ("data_gen", "judge", "train", "eval"):
        m = read_json(run_dir / "iter_001" / stage / "manifest.json")
        assert m["stage"] == stage and len(m["config_hash"]) == 64 and m["versions"]["trl"]
    train = read_json(run_dir / "iter_001/train/manifest.json")["metrics"]
    assert train["pairs"] == stats["pairs"] and train["steps"] >= 1

    decision = read_json(run_dir / "iter_001/eval/decision.json")
    metrics = read_json(run_dir / "iter_001/eval/metrics.json")
    for key in ("win_rate", "length_ratio", "distinct2", "judge_valid_rate", "kl_per_token"):
        assert key in metrics
    assert decision["reasons"] and len(decision["guards"]) == 3 and decision["improvement"][0]["ci95"][0] > 0
    assert decision["passed"], decision["reasons"]
    assert 0 <= metrics["capability"]["prompt_strict"] <= 1 and metrics["capability_floor"]["prompts"] == 10
    assert metrics["semantic_similarity"] is not None and metrics["prompt_drift"]["centroid_distance"] is not None
    state = read_json(run_dir / "state.json")
    assert [h["iteration"] for h in state["history"]] == [1, 2]
    logged = [(r["iteration"], r["stage"]) for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert logged == [(0, "eval")] + [(k, s) for k in (1, 2) for s in ("data_gen", "judge", "train", "eval")]
    assert "[iter 1] gate: promoted" in stdout and "[iter 2] judge (logprob" in stdout
    # every stage's summary line ends with its wall time and throughput (inference or training tokens/s)
    for stage in ("data_gen", "judge", "eval"):
        assert re.search(rf"^\[iter 1\] {stage}.*\[\d+s, \d+ generated tokens/s, \d+ tokens/s in all\]$", stdout, re.M), stdout
        tokens = json.loads((run_dir / "iter_001" / stage / "manifest.json").read_text())["tokens"]
        assert tokens["prompt"] > 0 and tokens["per_s"] > 0
    assert re.search(r"^\[iter 1\] train: .*\[\d+s, \d+ training tokens/s\]$", stdout, re.M), stdout

    # iteration 2 starts from M1: it generates and judges through adapter 1 and is compared with M1's probes
    lineage = read_json(run_dir / "iter_002/lineage.json")
    assert lineage == {"iteration": 2, "parent_iteration": 1, "parent_adapter": "iter_001/train/adapter"}
    pairs2 = read_jsonl(run_dir / "iter_002/judge/pairs.jsonl")
    assert pairs2 and all(p["provenance"]["judge"].endswith("+iter_001/train/adapter") for p in pairs2)
    assert read_json(run_dir / "iter_002/eval/decision.json")["previous_iteration"] == 1
    assert read_json(run_dir / "iter_002/judge/stats.json")["consistency"]["n"] == 8  # tau vs M0 as judge
    train2 = read_json(run_dir / "iter_002/train/manifest.json")["metrics"]
    assert train2["reference"].endswith("iter_001/train/adapter")

    status = subprocess.run([sys.executable, "-m", "selfreward.cli", "status", str(run_dir)], capture_output=True,
                            text=True, cwd=run_dir.parent)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^iter_002 +done \d+s +done \d+s +done \d+s +done \d+s +promoted$", status.stdout, re.M), \
        status.stdout


def test_report_of_the_run(run_a, tmp_path):
    """`selfreward report` on the real SmolLM2 run: every section has its plot, and every image decodes."""
    import matplotlib.image

    run_dir, _ = run_a
    page_path = tmp_path / "report.html"
    out = subprocess.run([sys.executable, "-m", "selfreward.cli", "report", str(run_dir), "--out", str(page_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and str(page_path) in out.stdout, out.stderr
    page = page_path.read_text()
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 7, [alt for alt, _ in images]  # scores, lengths, diversity, win rate, known answers,
    for alt, data in images:  # pairs, DPO curves
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300 and pixels.std() > 0.01, alt
    assert "did not finish" not in page and "No per-step log" not in page
    assert "Iteration 2: gate passed &rarr; promoted" in page


def _snapshot(run_dir):
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in run_dir.rglob("*") if p.is_file() and "wandb" not in p.parts}


def test_rerun_skips_everything(run_a, recipe):
    run_dir, _ = run_a
    before = _snapshot(run_dir)
    out = subprocess.run(cmd(recipe), capture_output=True, text=True, cwd=recipe.parent, timeout=300)
    assert out.returncode == 0
    assert "all 2 iterations are complete; nothing to do" in out.stdout
    assert _snapshot(run_dir) == before


def _shards(run_dir):
    """Every finished shard of a run (a JSONL file opening with a shard header), by path: (mtime, bytes)."""
    found = {}
    for p in sorted(run_dir.rglob("shards/*.jsonl")):
        with open(p, encoding="utf-8") as f:
            first = f.readline()
        if first.startswith("{") and SHARD_HEADER in json.loads(first):
            found[p.relative_to(run_dir).as_posix()] = (p.stat().st_mtime_ns, p.read_bytes())
    return found


def test_killed_run_resumes_to_the_same_artifacts(run_a, recipe):
    run_a_dir, _ = run_a
    run_dir = run_a_dir.parent / "b"
    shard = run_dir / "iter_001/data_gen/shards/responses-00001.jsonl"
    b = ("run.name=b", "run.iterations=1")  # one iteration is enough to compare, and iterations are operational
    shutil.copytree(run_a_dir / "iter_000", run_dir / "iter_000")  # run a's M0 baseline (same identity): reused
    proc = subprocess.Popen(cmd(recipe, *b), cwd=recipe.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while not shard.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert shard.exists() and proc.poll() is None, "never reached mid-generation"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "iter_001/data_gen/manifest.json").exists()
    assert not (run_dir / "iter_001/data_gen/responses.jsonl").exists()
    assert not list(run_dir.rglob("*.tmp"))
    kept = _shards(run_dir)  # the baseline's (copied) and data_gen's finished shards, with their bytes and mtimes
    assert any(k.startswith("iter_001/data_gen/shards/responses-") for k in kept)

    out = subprocess.run(cmd(recipe, *b), capture_output=True, text=True, cwd=recipe.parent, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    # reuse counted, not assumed (vLLM generation): no shard that existed at the kill was computed again or
    # rewritten, and data_gen computed exactly the shards that were missing
    computed = re.findall(r"^shard (\S+): \d+ rows computed", out.stdout + out.stderr, re.M)
    after = _shards(run_dir)
    assert not set(computed) & set(kept), sorted(set(computed) & set(kept))
    assert all(after[k] == v for k, v in kept.items())
    gen = [k for k in after if k.startswith("iter_001/data_gen/")]
    assert sorted(gen) == sorted(k for k in _shards(run_a_dir) if k.startswith("iter_001/data_gen/"))
    assert sorted(c for c in computed if c.startswith("iter_001/data_gen/")) == sorted(set(gen) - set(kept))
    assert "[iter 0]" in out.stdout and not [c for c in computed if c.startswith("iter_000/")]
    # byte-identical artifacts: sampling is seeded per row, shards are cut at fixed boundaries, CPU training is
    # deterministic; only wall times and the run name differ in the manifests
    for rel in ARTIFACTS:
        assert (run_dir / rel).read_bytes() == (run_a_dir / rel).read_bytes(), rel
    for stage in ("data_gen", "judge", "train", "eval"):
        a = read_json(run_a_dir / "iter_001" / stage / "manifest.json")
        b = read_json(run_dir / "iter_001" / stage / "manifest.json")
        assert a["config_hash"] == b["config_hash"] and a["outputs"] == b["outputs"], stage
    assert read_json(run_dir / "state.json")["history"] == read_json(run_a_dir / "state.json")["history"][:1]
