"""metrics.jsonl is the source of truth; W&B (offline here) receives the same numbers with step = iteration."""
import json

from selfreward import config
from selfreward.records import read_jsonl, write_jsonl
from selfreward.tracking import Tracker


def _manifest(h, **metrics):
    return {"config_hash": h, "metrics": metrics}


def test_metrics_jsonl_and_offline_wandb(tmp_path, recipe_data, monkeypatch, write_recipe):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    recipe_data["tracking"] = {"wandb": True, "project": "selfreward-test"}
    cfg = config.load(write_recipe(tmp_path / "r.yaml", recipe_data))
    run_dir = cfg.run_dir()
    pairs = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": "b"}],
              "provenance": {"chosen_score": 4, "rejected_score": 1}}]
    write_jsonl(run_dir / "iter_001" / "judge" / "pairs.jsonl", pairs)
    tracker = Tracker(cfg, run_dir)
    tracker.log(1, "judge", _manifest("h1", pairs=1, parse_rate=0.5, dropped={"tie": 2}))
    tracker.log(1, "judge", _manifest("h1", pairs=1, parse_rate=0.5, dropped={"tie": 2}))  # skipped rerun
    tracker.log(1, "eval", _manifest("h2", win_rate=0.6))
    tracker.log(1, "judge", _manifest("h3", pairs=2, parse_rate=0.7, dropped={"tie": 0}))  # forced redo
    tracker.finish()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["stage"], r["config_hash"]) for r in rows] == [("eval", "h2"), ("judge", "h3")]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    # the judge stage's sample table was logged once per judge line written (h1, then h3)
    tables = sorted(offline[0].rglob("pairs_sample_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"][:3] == ["prompt", "chosen", "rejected"] and table["data"][0][:3] == ["q", "a", "b"]
