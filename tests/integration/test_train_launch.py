"""launch.mode: subprocess trains through `accelerate launch -m selfreward.train` across 2 CPU processes (gloo)."""
import pytest

from selfreward import artifacts, config, lifecycle, loop
from selfreward.records import read_json, write_json, write_jsonl


def test_accelerate_launch_two_processes(tiny_model_dir, tmp_path, write_recipe, make_pairs):
    data = {"run": {"name": "ddp", "output_dir": str(tmp_path / "runs")}, "model": {"ref": str(tiny_model_dir)},
            "train": {"per_device_train_batch_size": 2, "num_train_epochs": 1, "learning_rate": 5e-3, "lora_r": 8, "max_length": 128},
            "launch": {"mode": "subprocess", "accelerate_config": "cpu-ddp", "num_processes": 2}}
    cfg = config.load(write_recipe(tmp_path / "r.yaml", data))
    run_dir = loop.prepare_run_dir(cfg, force=False)
    iter_dir = artifacts.iteration_dir(run_dir, 1)
    write_json(iter_dir / "lineage.json", {"iteration": 1, "parent_iteration": 0, "parent_adapter": None})
    write_jsonl(iter_dir / "judge" / "pairs.jsonl", make_pairs(8))
    artifacts.write_manifest(iter_dir / "judge", "judge", {"judge": "test"}, {}, {}, 0.0)

    from selfreward.train import stage

    manifest = lifecycle.execute(stage.STAGE, cfg, iter_dir)
    assert manifest == read_json(iter_dir / "train" / "manifest.json")
    m = manifest["metrics"]
    assert m["world_size"] == 2
    assert m["steps"] == 2  # 8 pairs / (2 per process x 2 processes)
    assert m["loss_first"] == pytest.approx(0.6931, abs=1e-3)
    assert (iter_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (iter_dir / "train" / "adapter" / "ref").exists()
    # a second call finds the manifest and launches nothing
    assert lifecycle.execute(stage.STAGE, cfg, iter_dir) == manifest
