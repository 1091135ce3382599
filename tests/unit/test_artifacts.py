import json
import os

import pytest

from selfreward import artifacts, digests, stopping
from selfreward.records import read_jsonl, run_sharded, write_jsonl


def test_manifest_lists_outputs_and_skips_same_config(tmp_path):
    stage = tmp_path / "judge"
    write_jsonl(stage / "pairs.jsonl", [{"a": 1}, {"a": 2}])
    config = {"judge": {"beta": 1, "x": {"y": 2}}}
    assert artifacts.existing(stage, config, force=False) is None
    m = artifacts.write_manifest(stage, "judge", config, {"pairs": stage / "pairs.jsonl"}, {"n": 2}, 0.0)
    assert m["outputs"]["pairs"]["rows"] == 2
    assert m["outputs"]["pairs"]["sha256"]["pairs.jsonl"] == digests.sha256_file(stage / "pairs.jsonl")
    assert json.loads((stage / "manifest.json").read_text())["config_hash"] == artifacts.config_hash(config)
    assert artifacts.existing(stage, config, force=False)["metrics"] == {"n": 2}
    assert not [p for p in stage.iterdir() if p.name.endswith(".tmp")]


def test_changed_config_is_an_error_naming_keys_or_kept_aside_with_force(tmp_path):
    stage = tmp_path / "train"
    artifacts.write_manifest(stage, "train", {"train": {"beta": 0.1, "lr": 1}}, {}, {}, 0.0)
    new = {"train": {"beta": 0.2, "lr": 1}}
    with pytest.raises(artifacts.StageConflict, match=r"changed: train\.beta\); pass --force"):
        artifacts.existing(stage, new, force=False)
    assert artifacts.existing(stage, new, force=True) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("train.replaced-")]
    assert len(aside) == 1 and (aside[0] / "manifest.json").exists()
    assert not (stage / "manifest.json").exists()
    assert json.loads((stage / "started.json").read_text())["config"] == new


def test_partial_stage_is_bound_to_the_config_that_started_it(tmp_path):
    stage = tmp_path / "data_gen"
    old = {"data_gen": {"temperature": 0.8}}
    assert artifacts.existing(stage, old, force=False) is None
    write_jsonl(stage / "shards" / "responses-00000.jsonl", [{"x": 1}])  # then killed
    assert artifacts.existing(stage, old, force=False) is None  # same config: resume, shards kept
    assert (stage / "shards" / "responses-00000.jsonl").exists()
    with pytest.raises(artifacts.StageConflict, match=r"started with a different config \(changed: "
                                                      r"data_gen\.temperature\)"):
        artifacts.existing(stage, {"data_gen": {"temperature": 1.0}}, force=False)
    assert artifacts.existing(stage, {"data_gen": {"temperature": 1.0}}, force=True) is None
    assert not (stage / "shards").exists()  # the old shards went aside with the old stage


def test_shards_are_reused_and_preemption_stops_between_shards(tmp_path):
    calls = []

    def work(chunk):
        calls.append(list(chunk))
        return [{"x": x, "sq": x * x} for x in chunk]

    items = list(range(10))
    rows = run_sharded(items, 4, tmp_path, "part", work, "t")
    assert [r["x"] for r in rows] == items and len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    (tmp_path / "part-00001.jsonl").unlink()  # as if killed while writing shard 1
    calls.clear()
    assert run_sharded(items, 4, tmp_path, "part", work, "t") == rows
    assert calls == [[4, 5, 6, 7]]
    write_jsonl(tmp_path / "part-00002.jsonl", [{"x": 8, "sq": 64}])  # a shard cut elsewhere is redone
    calls.clear()
    assert run_sharded(items, 4, tmp_path, "part", work, "t") == rows and calls == [[8, 9]]
    (tmp_path / "part-00002.jsonl").unlink()
    stopping.request_stop(15)
    try:
        with pytest.raises(stopping.Preempted):
            run_sharded(items, 4, tmp_path, "part", work, "t")
    finally:
        stopping.clear_stop()
    assert read_jsonl(tmp_path / "part-00000.jsonl") == rows[:4]


def test_changed_keys_flattens():
    assert artifacts.changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 0}}) == ["a.c", "a.d"]
