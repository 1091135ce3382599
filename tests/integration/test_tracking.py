"""metrics.jsonl is the source of truth; W&B (offline here) receives the same numbers. The offline run is read
back from the `.wandb` file W&B writes (LevelDB-log framed protobuf records, wandb.proto.wandb_internal_pb2):
scalars on the iteration axis, training curves on their own, tables, adapter artifacts with their lineage,
and one run id kept across processes and a moved run directory."""
import json
import math
import os
import struct
from pathlib import Path

import pytest

from selfreward import config, tracking
from selfreward.records import read_json, read_jsonl, write_jsonl
from selfreward.tracking import Tracker

_BLOCK, _FULL, _LAST = 32768, 1, 4


def _records(path: Path):
    """The protobuf records of one .wandb file: a 7-byte header (':W&B', magic 0xBEE1, version), then records
    in 32 KiB blocks, each chunk framed by crc32 (4), length (2) and type (1: full, 2: first, 3: middle, 4: last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def _value(item):
    return json.loads(item.value_json)


def read_offline(run_dir: Path) -> dict:
    """Everything the offline W&B runs of a run directory wrote, in the order the processes ran."""
    out = {"runs": [], "history": [], "metrics": {}, "artifacts": [], "dirs": []}
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        (wandb_file,) = d.glob("run-*.wandb")
        out["dirs"].append(d)
        for r in _records(wandb_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["runs"].append(r.run)
            elif kind == "history":
                row = {"_dir": d}
                for item in r.history.item:
                    keys = list(item.nested_key) or [item.key]
                    node = row
                    for k in keys[:-1]:
                        node = node.setdefault(k, {})
                    node[keys[-1]] = _value(item)
                out["history"].append(row)
            elif kind == "metric":
                out["metrics"][r.metric.name or r.metric.glob_name] = r.metric.step_metric
            elif kind == "artifact" and r.artifact.type == "model":
                out["artifacts"].append({"name": r.artifact.name, "aliases": list(r.artifact.aliases),
                                         "metadata": json.loads(r.artifact.metadata),
                                         "files": sorted(e.path for e in r.artifact.manifest.contents)})
    return out


def _table(row: dict, key: str) -> dict:
    return json.loads((row["_dir"] / "files" / row[key]["path"]).read_text())


def _same(a, b) -> bool:
    return a == b or isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def _manifest(h, **metrics):
    return {"config_hash": h, "metrics": metrics}


def test_metrics_jsonl_and_offline_wandb(tmp_path, recipe_data, monkeypatch, write_recipe):
    monkeypatch.setenv("WANDB_MODE", "offline")
    recipe_data["tracking"] = {"wandb": True, "project": "selfreward-test"}
    cfg = config.load(write_recipe(tmp_path / "r.yaml", recipe_data))
    run_dir = cfg.run_dir()
    pairs = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": "b"}],
              "provenance": {"prompt_id": "p0", "chosen_score": 4, "rejected_score": 1}}]
    write_jsonl(run_dir / "iter_001" / "judge" / "pairs.jsonl", pairs)
    tracker = Tracker(cfg, run_dir)
    tracker.log(1, "judge", _manifest("h1", pairs=1, parse_rate=0.5, dropped={"tie": 2}))
    tracker.log(1, "judge", _manifest("h1", pairs=1, parse_rate=0.5, dropped={"tie": 2}))  # skipped rerun
    tracker.log(1, "eval", _manifest("h2", win_rate=0.6))
    tracker.log(1, "judge", _manifest("h3", pairs=2, parse_rate=0.7, dropped={"tie": 0}))  # forced redo
    tracker.finish()
    import wandb

    wandb.teardown()  # W&B's service writes the .wandb file; it is complete once the service has stopped
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["stage"], r["config_hash"]) for r in rows] == [("eval", "h2"), ("judge", "h3")]
    wb = read_offline(run_dir)
    # one W&B row per metrics.jsonl line written (h1, h2, h3), all at iteration 1, nested keys flattened
    assert [(h["iteration"], h.get("judge/pairs"), h.get("judge/dropped/tie"), h.get("eval/win_rate"))
            for h in wb["history"]] == [(1, 1, 2, None), (1, None, None, 0.6), (1, 2, 0, None)]
    assert [h["_step"] for h in wb["history"]] == [0, 1, 2]
    assert wb["metrics"]["judge/pairs"] == "iteration" and wb["metrics"]["eval/win_rate"] == "iteration"


def test_run_id_is_created_once_and_travels_with_the_directory(tmp_path):
    run_dir = tmp_path / "a" / "run"
    run_dir.mkdir(parents=True)
    rid = tracking.run_id(run_dir)
    assert rid and tracking.run_id(run_dir) == rid and (run_dir / "wandb_run_id").read_text() == rid + "\n"
    assert [p.name for p in run_dir.iterdir()] == ["wandb_run_id"]  # no temporary file left behind
    os.rename(tmp_path / "a", tmp_path / "b")
    assert tracking.run_id(tmp_path / "b" / "run") == rid
    # a directory that logged before ids were kept in a file continues the run its path named
    old = tmp_path / "old"
    legacy = __import__("hashlib").sha256(str(old.resolve()).encode()).hexdigest()[:16]
    (old / "wandb" / f"offline-run-20250101_000000-{legacy}").mkdir(parents=True)
    assert tracking.run_id(old) == legacy


def test_no_credentials_means_offline(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking._offline()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not tracking._offline()


# ---- a real loop on a tiny model, in two processes, the run directory moved in between ----------------------

@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_loop_recipe):
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("tracked")
    recipe = tiny_loop_recipe(tmp, "t", run={"output_dir": str(tmp / "runs-a")}, model={"max_model_len": 2048},
                              tracking={"wandb": True, "project": "selfreward-test", "group": "sweep-7",
                                        "tags": ["tiny", "ci"]})
    # no API key anywhere W&B looks (env, netrc, its settings): offline by the loop's own decision
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(NETRC=str(tmp / "no-netrc"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"))

    def run(*overrides):
        out = subprocess.run([sys.executable, "-m", "selfreward.cli", "run", str(recipe), *overrides],
                             capture_output=True, text=True, cwd=tmp, env=env, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    first = run()
    os.rename(tmp / "runs-a", tmp / "runs-b")  # a requeued job on another mount, or a user tidying up
    second = run(f"run.output_dir={tmp / 'runs-b'}", "run.iterations=2")
    run_dir = tmp / "runs-b" / "t"
    return run_dir, [first, second], read_offline(run_dir), config.from_run_yaml(run_dir / "run.yaml")


def test_one_run_across_processes_and_a_moved_directory(tracked_run):
    run_dir, procs, wb, _ = tracked_run
    rid = (run_dir / "wandb_run_id").read_text().strip()
    assert len(wb["dirs"]) == 2 and all(d.name.endswith(f"-{rid}") for d in wb["dirs"])
    assert [(r.run_id, r.run_group, r.display_name, list(r.tags)) for r in wb["runs"]] == \
        [(rid, "sweep-7", "t", ["tiny", "ci"])] * 2
    for p in procs:  # exactly one line about W&B, saying how to upload
        lines = [x for x in (p.stdout + p.stderr).splitlines() if "wandb" in x.lower()]
        assert len(lines) == 1 and "wandb sync " in lines[0] and rid in lines[0], lines
    assert f"wandb sync {run_dir}/wandb/offline-run-*-{rid}" in procs[1].stdout
    steps = [h["_step"] for h in wb["history"]]
    assert steps == sorted(set(steps))  # the second process continued W&B's step, it did not restart at 0
    assert int((run_dir / "wandb_step").read_text()) == steps[-1] + 1


def test_stage_metrics_on_the_iteration_axis(tracked_run):
    run_dir, _, wb, _ = tracked_run
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert {(r["iteration"], r["stage"]) for r in lines} >= {(0, "eval"), (1, "train"), (2, "judge"), (2, "eval")}
    for line in lines:
        expected = {f"{line['stage']}/{k}": v for k, v in tracking._scalars(line["metrics"]).items()}
        (row,) = [h for h in wb["history"] if h.get("iteration") == line["iteration"]
                  and any(k.startswith(line["stage"] + "/") for k in h)]
        logged = {k: row[k] for k in expected}
        assert all(_same(logged[k], v) for k, v in expected.items()), (line["stage"], logged, expected)
        assert all(wb["metrics"][k] == "iteration" for k in expected)
    for k in (1, 2):
        decision = read_json(run_dir / f"iter_00{k}" / "eval" / "decision.json")
        (row,) = [h for h in wb["history"] if h.get("iteration") == k and "gate/passed" in h]
        assert row["gate/passed"] == int(decision["passed"])
        table = _table(row, "gate/decision")
        assert table["columns"] == ["kind", "metric", "value", "bound", "passed", "reason"]
        assert table["data"][0][4:] == [decision["passed"], "; ".join(decision["reasons"])]
        assert [r[1] for r in table["data"][1:]] == [b["metric"] for b in decision["improvement"]] + \
            [g["metric"] for g in decision["guards"]]


def test_training_curves_on_their_own_axis(tracked_run):
    run_dir, _, wb, _ = tracked_run
    assert wb["metrics"]["train/curve/*"] == "train/step"
    curve = [h for h in wb["history"] if "train/step" in h]
    offset, expected = 0, []
    for k in (1, 2):
        history = read_jsonl(run_dir / f"iter_00{k}" / "train" / "log_history.jsonl")
        assert history and all("loss" in h and "rewards/margins" in h for h in history)
        expected += [(offset + h["step"], k, h["loss"], h["rewards/margins"]) for h in history]
        offset += read_json(run_dir / f"iter_00{k}" / "train" / "manifest.json")["metrics"]["steps"]
    assert [(h["train/step"], h["train/curve/iteration"], h["train/curve/loss"], h["train/curve/rewards/margins"])
            for h in curve] == expected


def test_tables_of_samples_judgments_and_pairs(tracked_run):
    run_dir, _, wb, _ = tracked_run
    for k in (1, 2):
        it = run_dir / f"iter_00{k}"
        (row,) = [h for h in wb["history"] if h.get("iteration") == k and "judge/samples_table" in h]
        samples = _table(row, "judge/samples_table")
        cols = samples["columns"]
        judgments = read_jsonl(it / "judge" / "judgments.jsonl")
        prompts = {p["id"]: p["instruction"] for p in read_jsonl(it / "data_gen" / "prompts.jsonl")}
        responses = {r["id"]: r["response"] for r in read_jsonl(it / "data_gen" / "responses.jsonl")}
        pairs = read_jsonl(it / "judge" / "pairs.jsonl")
        roles = {p["provenance"]["chosen_id"]: "chosen" for p in pairs}
        roles.update({p["provenance"]["rejected_id"]: "rejected" for p in pairs})
        got = [dict(zip(cols, r)) for r in samples["data"]]
        assert len(got) == len(judgments) > 0  # 3 prompts, all within the sample
        for j, g in zip(judgments, got):
            assert (g["prompt"], g["response"], g["judge_raw"], g["score"], g["valid"], g["pair_role"]) == \
                (prompts[j["prompt_id"]], responses[j["response_id"]], j["raw"], j["score"],
                 j["score"] is not None, roles.get(j["response_id"], ""))
        table = _table(row, "judge/pairs_table")
        assert [r[2:] for r in table["data"]] == [
            [p["chosen"][-1]["content"], p["rejected"][-1]["content"], p["provenance"]["chosen_score"],
             p["provenance"]["rejected_score"]] for p in pairs]


def test_adapters_are_artifacts_with_their_lineage(tracked_run):
    run_dir, _, wb, cfg = tracked_run
    assert [sorted(a["aliases"]) for a in wb["artifacts"]] == [["iter-1", "latest"], ["iter-2", "latest"]]
    for k, art in zip((1, 2), wb["artifacts"]):
        it = run_dir / f"iter_00{k}"
        lineage = read_json(it / "lineage.json")
        judge = read_json(it / "judge" / "manifest.json")
        meta = art["metadata"]
        assert art["name"] == "t-adapter" and art["files"] == ["adapter_config.json", "adapter_model.safetensors"]
        assert (meta["iteration"], meta["base_model"], meta["parent_iteration"], meta["parent_adapter"]) == \
            (k, cfg.model.ref, lineage["parent_iteration"], lineage["parent_adapter"])
        assert meta["config_hash"] == read_json(it / "train" / "manifest.json")["config_hash"]
        assert meta["pairs_sha256"] == judge["outputs"]["pairs"]["sha256"]["pairs.jsonl"]
        assert json.loads((it / "train" / "adapter" / "adapter_config.json").read_text())[
            "base_model_name_or_path"] == cfg.model.ref
