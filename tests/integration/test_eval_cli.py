"""`selfreward eval RUN --iteration K --ifeval FILE` through the CLI on a finished tiny run: each model answers the
file, the scores are lm-eval's own (its `process_results` and instruction-level aggregation on the same
responses), iteration K answers with its own adapter, and nothing of the run's stages or state changes."""
import hashlib
import json

import pytest

from selfreward import ifeval
from selfreward.records import read_json, read_jsonl


def _files(run_dir, skip):
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and skip not in p.parts}


def test_eval_cli_scores_an_ifeval_file_as_lm_eval_does(tmp_path, tiny_loop_recipe, recipes_dir, cli):
    recipe = tiny_loop_recipe(tmp_path, "evalcli")
    out = cli("run", recipe, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "evalcli"
    # a user's own IFEval-format file: the first ten shipped probes (ten types, three with a second instruction),
    # keys renumbered as another dataset might
    rows = [{**r, "key": 1000 + i} for i, r in enumerate(read_jsonl(recipes_dir / "probes" / "ifeval.jsonl")[:10])]
    assert len({t for r in rows for t in r["instruction_id_list"]}) >= 8
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = _files(run_dir, "ifeval-mine")
    _, lm_eval_utils = ifeval._load()  # lm-eval's own ifeval task utilities
    answers = {}
    for k in (0, 1):
        got = cli("eval", run_dir, "--iteration", k, "--ifeval", mine, "--max-tokens", 16, timeout=600)
        assert got.returncode == 0, got.stderr[-3000:]
        out_dir = run_dir / f"iter_{k:03d}" / "eval" / "ifeval-mine"
        scores, responses = read_json(out_dir / "scores.json"), read_jsonl(out_dir / "responses.jsonl")
        assert len(responses) == len(rows) and scores["prompts"] == len(rows)
        docs = {str(r["key"]): r for r in rows}
        theirs = [lm_eval_utils.process_results(docs[str(a["id"])], [a["response"]]) for a in responses]
        assert scores["prompt_strict"] == pytest.approx(sum(t["prompt_level_strict_acc"] for t in theirs) / len(rows))
        assert scores["prompt_loose"] == pytest.approx(sum(t["prompt_level_loose_acc"] for t in theirs) / len(rows))
        assert scores["instruction_strict"] == pytest.approx(
            lm_eval_utils.agg_inst_level_acc([t["inst_level_strict_acc"] for t in theirs]))
        assert scores["instruction_loose"] == pytest.approx(
            lm_eval_utils.agg_inst_level_acc([t["inst_level_loose_acc"] for t in theirs]))
        for a, t in zip(responses, theirs):  # per prompt too, not only on average
            assert (a["strict"], a["instructions"]) == (t["prompt_level_strict_acc"], t["inst_level_strict_acc"])
        assert scores["floor"]["prompts"] == len(rows)
        assert str(got.stdout).strip(), "the command prints its scores"
        answers[k] = scores["model"]
    adapter = (run_dir / "iter_001" / "train" / "adapter").resolve()
    assert answers[1] == str(adapter) and answers[0] != answers[1]
    assert _files(run_dir, "ifeval-mine") == before  # the run's own stages, manifests and state are untouched
