"""The gate's power, on the embedded SmolLM2 through the CLI and the default gate: a positive control (a candidate
trained on verifier-chosen pairs for one instruction that even a 135M model learns) is promoted on its capability
gain; a negative control (the same run with the verifier's verdicts shuffled among each prompt's responses, so the
pairs carry no information) is refused. Both runs use the same M0 baseline and the same prompts and responses;
only the labels differ."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from selfreward import ifeval
from selfreward.eval.capability import BASE_PROMPTS
from selfreward.records import read_json, read_jsonl

pytestmark = pytest.mark.e2e

TYPE = "detectable_content:number_placeholders"
KWARGS = {"num_placeholders": 2}
# training prompts: varied requests that share no base prompt with the probes (and pass the ROUGE-L filter)
TRAIN = ["Describe your favourite season and why.", "Explain how to fold a paper plane.",
         "Write about a lighthouse keeper's night.", "What makes a quiet library pleasant in winter?",
         "Why do people keep diaries?", "Give advice to a friend who is moving away.",
         "Summarise what happens in a bakery before dawn.", "How does a compass point north?",
         "Tell a story about a lost umbrella.", "Paint a picture in words of a mountain lake at sunrise.",
         "List the qualities of a good teacher.", "What can a street musician teach us about courage?",
         "Outline the steps to plant an apple tree.", "Recall the first day at a new school.",
         "Imagine an old clock tower that can talk.", "Why do cats like cardboard boxes?",
         "Compose a postcard from a seaside town.", "Plan a family dinner for eight people.",
         "Explain how a kite stays in the air.", "Suggest games for a rainy afternoon indoors.",
         "Draft a speech for a village fair.", "How can someone make friends in a new city?",
         "Recommend books for a long train journey.", "Why does the moon have phases?",
         "Compare tea and coffee for a morning routine.", "Give tips for a first camping trip.",
         "What should a beginner know about chess openings?", "Describe the work of a firefighter.",
         "Argue for more bicycle lanes in cities.", "Introduce a robot that helps in a hospital.",
         "What happens inside a volcano before it erupts?", "Advise a student preparing for exams.",
         "Report on a football match between two village teams.", "Pitch an idea for a new board game.",
         "How do birds find their way when they migrate?", "Welcome visitors to a small science museum.",
         "Recount a trip to a busy zoo.", "What does an orchestra conductor actually do?",
         "Motivate a runner before a marathon.", "Sketch the daily life of astronauts on a space station.",
         "Share ideas for decorating a birthday cake.", "Why are coral reefs important?",
         "Propose rules for a shared kitchen.", "Explain how a windmill turns wind into power.",
         "Praise a neighbour who fixed your fence.", "Invent a legend about a river spirit.",
         "What makes a desert night so cold?", "Teach a child how to tie shoelaces."]


def _probe(key: int, base: str) -> dict:
    text, kw = ifeval.describe(TYPE, 0, KWARGS)
    return {"key": key, "prompt": f"{base} {text}", "instruction_id_list": [TYPE], "kwargs": [kw]}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, recipes_dir, write_recipe):
    tmp = tmp_path_factory.mktemp("power")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TRAIN))
    (tmp / "ifeval.jsonl").write_text("".join(json.dumps(_probe(i, b)) + "\n" for i, b in enumerate(BASE_PROMPTS)))
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()
    (tmp / "probes.jsonl").write_text("\n".join(probes[:8]) + "\n")
    data = {
        "run": {"name": "verified", "output_dir": str(tmp / "runs"), "iterations": 1, "seed": 0},
        "data_gen": {"source": "dataset", "dataset": {"path": str(tmp / "prompts.jsonl"), "prompt_column": "prompt"},
                     "num_prompts": len(TRAIN), "n_responses": 6, "temperature": 1.0, "max_tokens": 64,
                     "shard_size": 96, "constraints": {"share": 1.0, "types": [TYPE], "hold_out_types": []}},
        "judge": {"mode": "logprob", "verify": "ifeval", "reward": "verifier", "allow_truncated": True,
                  "known_answer_pairs": 4, "shard_size": 128},
        "train": {"learning_rate": 2.0e-4, "num_train_epochs": 2, "per_device_train_batch_size": 4,
                  "max_length": 256},
        "eval": {"probes": str(tmp / "probes.jsonl"), "capability_probes": str(tmp / "ifeval.jsonl"),
                 "max_tokens": 48, "capability_max_tokens": 48, "shard_size": 64},
    }
    return write_recipe(tmp / "recipe.yaml", data)


def _run(recipe, *overrides):
    out = subprocess.run([sys.executable, "-m", "selfreward.cli", "run", str(recipe), *overrides],
                         capture_output=True, text=True, cwd=recipe.parent, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout, out.stderr


def _improvement(decision: dict, metric: str) -> dict:
    return next(i for i in decision["improvement"] if i["metric"] == metric)


@pytest.fixture(scope="module")
def positive(recipe):
    stdout, _ = _run(recipe)
    return recipe.parent / "runs" / "verified", stdout


def test_positive_control_is_promoted_by_the_default_gate_on_its_capability_gain(positive):
    run_dir, stdout = positive
    pairs = read_jsonl(run_dir / "iter_001/judge/pairs.jsonl")
    assert len(pairs) >= 6
    assert all(p["provenance"]["reward"]["decided_by"] == "verifier" for p in pairs)
    assert all(p["provenance"]["reward"]["chosen_share"] > p["provenance"]["reward"]["rejected_share"] for p in pairs)
    decision = read_json(run_dir / "iter_001/eval/decision.json")
    cap = _improvement(decision, "capability")
    assert decision["passed"], decision["reasons"]
    assert cap["significant"] and cap["ci95"][0] > 0, cap
    metrics = read_json(run_dir / "iter_001/eval/metrics.json")
    assert metrics["capability_gain_hard"] > 0  # the probes "OK." fails gained: not a brevity trick
    assert metrics["capability_splits"]["trained"]["gain"] > 0
    assert read_json(run_dir / "iter_001/outcome.json")["promoted"] is True
    assert read_json(run_dir / "state.json")["promoted_iteration"] == 1
    stats = read_json(run_dir / "iter_001/judge/stats.json")["verifier"]
    assert stats["rule"] == "verifier" and stats["control"] == "none" and stats["agreement"]["n"] > 0
    assert "judge-verifier agreement" in stdout and "gate PASSED" in stdout


def test_negative_control_with_shuffled_verdicts_is_refused(positive, recipe):
    run_dir, _ = positive
    shuffled = run_dir.with_name("shuffled")
    # the same M0 baseline and the same prompts and responses as the positive control (its data_gen stage, whose
    # identity the verifier's control is not part of): only the labels differ. Reused, not recomputed: the
    # manifests are unchanged and the run computed no shard of either stage. The judge stage's identity holds the
    # control, so it runs again, but on the same responses with the same judge: its judgment, known-answer and
    # consistency shards are the positive control's (a shard is reused for exactly the items it was computed
    # from), and only the pairs, built from the shuffled verdicts, are new.
    reused = ("iter_000", "iter_001/lineage.json", "iter_001/data_gen", "iter_001/judge/shards")
    for part in reused:
        src, dst = run_dir / part, shuffled / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    manifests = {m: (shuffled / m).read_bytes() for m in ("iter_000/eval/manifest.json", "iter_001/data_gen/manifest.json")}
    stdout, stderr = _run(recipe, "run.name=shuffled", "judge.verify_control=shuffled")
    assert {m: (shuffled / m).read_bytes() for m in manifests} == manifests
    computed = re.findall(r"^shard (\S+): \d+ rows computed", stdout + stderr, re.M)
    reused_dirs = ("iter_000/", "iter_001/data_gen/", "iter_001/judge/")
    assert computed and not [c for c in computed if c.startswith(reused_dirs)], computed
    judgments = read_jsonl(shuffled / "iter_001/judge/judgments.jsonl")
    assert judgments == read_jsonl(run_dir / "iter_001/judge/judgments.jsonl")
    assert read_json(shuffled / "iter_001/judge/stats.json")["verifier"]["control"] == "shuffled"
    pairs = read_jsonl(shuffled / "iter_001/judge/pairs.jsonl")
    assert pairs and all(p["provenance"]["reward"]["shuffled"] for p in pairs)
    verdicts = {j["response_id"]: j["verdict"]["passed"] for j in judgments}
    # some pairs now prefer a response the verifier fails over one it passes (the real verdicts are on the judgments)
    assert any(not verdicts[p["provenance"]["chosen_id"]] and verdicts[p["provenance"]["rejected_id"]] for p in pairs)
    decision = read_json(shuffled / "iter_001/eval/decision.json")
    assert not decision["passed"]
    assert not _improvement(decision, "capability")["significant"]
    assert read_json(shuffled / "iter_001/outcome.json")["promoted"] is False
