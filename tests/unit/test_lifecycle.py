"""One stage lifecycle: identity from the keys a stage reads, skip, conflict naming keys, --force, manifest last."""
import pytest
import yaml

from selfreward import artifacts, config, lifecycle
from selfreward.exits import StageConflict
from selfreward.records import read_json, write_json, write_jsonl


def _stage(calls, reads=("data_gen.temperature", "data_gen.seeds", "run.seed")):
    def run(cfg, iter_dir):
        calls.append(iter_dir)
        out = iter_dir / "toy" / "rows.jsonl"
        write_jsonl(out, [{"t": cfg.data_gen.temperature}])
        assert not (iter_dir / "toy" / "manifest.json").exists()  # the manifest comes after the work
        return lifecycle.Outputs({"rows": out}, {"n": 1})
    return lifecycle.Stage("toy", reads=reads, run=run, summary=lambda m: "toy", upstream=("up",))


def _cfg(tmp_path, recipe_data, *overrides):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_data))
    return config.load(path, list(overrides))


def test_identity_skip_conflict_and_force(tmp_path, recipe_data):
    cfg = _cfg(tmp_path, recipe_data)
    iter_dir = artifacts.iteration_dir(cfg.run_dir(), 1)
    write_json(iter_dir / "up" / "manifest.json", {"config_hash": "abc"})
    calls = []
    stage = _stage(calls)
    ident = lifecycle.identity(stage, cfg, iter_dir)
    assert ident["data_gen.seeds"].startswith("sha256:")  # files by content, not path
    assert ident["upstream.up"] == "abc"
    m = lifecycle.execute(stage, cfg, iter_dir)
    assert m["config_hash"] == artifacts.config_hash(ident) and m["outputs"]["rows"]["rows"] == 1
    assert read_json(iter_dir / "toy" / "manifest.json") == m and len(calls) == 1

    # an operational key (shard size) and a key the stage does not read change nothing: skipped
    cfg2 = _cfg(tmp_path, recipe_data, "data_gen.shard_size=3", "train.beta=0.3")
    assert lifecycle.execute(stage, cfg2, iter_dir) == m and len(calls) == 1

    cfg3 = _cfg(tmp_path, recipe_data, "data_gen.temperature=0.3")
    with pytest.raises(StageConflict, match=r"changed: data_gen\.temperature\)"):
        lifecycle.execute(stage, cfg3, iter_dir)
    assert len(calls) == 1
    m3 = lifecycle.execute(stage, cfg3, iter_dir, force=True)
    assert len(calls) == 2 and m3["config_hash"] != m["config_hash"]
    assert [p.name for p in iter_dir.iterdir() if p.name.startswith("toy.replaced-")]

    # a redone upstream stage changes the identity too
    write_json(iter_dir / "up" / "manifest.json", {"config_hash": "def"})
    with pytest.raises(StageConflict, match=r"upstream\.up"):
        lifecycle.execute(stage, cfg3, iter_dir)
