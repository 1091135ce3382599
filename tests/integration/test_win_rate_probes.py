"""`eval.win_rate_probes`: the frozen judge compares the answers of the probe sets the recipe names, both orders
each, and nothing else (what a CPU recipe saves by it is two long judgments per probe left out)."""
from selfreward.records import read_json, read_jsonl


def _pairwise_rows(eval_dir):
    return [row for shard in sorted((eval_dir / "shards").glob("pairwise-*.jsonl")) for row in read_jsonl(shard)]


def test_win_rate_on_the_drift_probes_only(tmp_path, tiny_loop_recipe, cli):
    recipe = tiny_loop_recipe(tmp_path, "drift", probes=3, ifeval=2, eval={"win_rate_probes": "drift"})
    out = cli("run", recipe, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    eval_dir = tmp_path / "runs" / "drift" / "iter_001" / "eval"
    rows = _pairwise_rows(eval_dir)
    # 3 drift probes x 2 orders; none of the 2 capability probes
    assert sorted((r["id"], r["order"]) for r in rows) == sorted(
        (f"drift:probe-00{i}", o) for i in (1, 2, 3) for o in ("AB", "BA"))
    metrics = read_json(eval_dir / "metrics.json")
    assert metrics["win_rate_n"] <= 3  # probes whose both orders gave the judge's A/B mass
    assert "capability" in metrics and metrics["capability"]["prompt_strict"] is not None  # still measured


def test_an_unknown_probe_set_is_one_line_and_exit_2(tmp_path, tiny_loop_recipe, cli):
    recipe = tiny_loop_recipe(tmp_path, "bad", eval={"win_rate_probes": "both"})
    out = cli("validate", recipe)
    assert out.returncode == 2 and "win_rate_probes" in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
        out.stderr
    assert not (tmp_path / "runs" / "bad").exists()
