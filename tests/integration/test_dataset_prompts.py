"""Prompts from a dataset (data_gen.source: dataset): JSONL and Parquet files, a sample drawn with the run seed,
deduplication against the seeds and earlier prompts, the accumulate and replace pools across two iterations,
the dataset file in the stage's identity, and bad datasets refused by `selfreward validate` in one line."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfreward import artifacts, config, lifecycle
from selfreward.data_gen import stage as data_gen
from selfreward.exits import StageConflict
from selfreward.records import read_json, read_jsonl, write_json

QUESTIONS = [
    "Explain to a ten year old why volcanoes erupt.",
    "List three ways to keep bread fresh for longer.",
    "What should a beginner know before buying a used bicycle?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How do honey bees tell each other where flowers are?",
    "Give me a packing checklist for a weekend camping trip.",
    "Why does the moon look larger near the horizon?",
    "Compare tea and coffee in terms of caffeine content.",
]
PARQUET = [
    "Recommend a board game for four players aged eight and up.",
    "Describe the smell of rain to someone who has never noticed it.",
    "What are the rules of tic-tac-toe?",
    "Write a limerick about a cat who loves cheese.",
    "How can I politely ask a neighbour to turn down loud music?",
    "Name four vegetables that grow well on a balcony.",
    "Explain compound interest using a piggy bank example.",
    "Plan a thirty minute beginner workout without equipment.",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, recipes_dir):
    """A JSONL dataset with a planted copy of a seed instruction and a planted copy of one of its own rows,
    and a Parquet dataset of other prompts."""
    tmp = tmp_path_factory.mktemp("dsprompts")
    seed = read_jsonl(recipes_dir / "seeds" / "instructions.jsonl")[0]["instruction"]
    rows = [{"question": q, "qid": f"q{i}"} for i, q in enumerate(QUESTIONS)]
    rows.insert(3, {"question": seed, "qid": "planted-seed"})
    rows.insert(6, {"question": rows[1]["question"].upper(), "qid": "planted-copy"})  # same words, other case
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"text": PARQUET}), tmp / "prompts.parquet")
    return tmp, rows, seed


def _cfg(tmp, write_recipe, tiny_model_dir, name, dataset, **data_gen):
    data = {"run": {"name": name, "output_dir": str(tmp / "runs"), "seed": data_gen.pop("seed", 0)},
            "model": {"ref": str(tiny_model_dir), "engine": "hf"},
            "judge": {"mode": "logprob"},
            "data_gen": {"source": "dataset", "dataset": dataset, "n_responses": 2, "max_tokens": 8, **data_gen}}
    return config.load(write_recipe(tmp / f"{name}.yaml", data))


def _data_gen(cfg, k):
    """Iteration k's data_gen stage as the loop runs it (M0 is the parent: no iteration was promoted)."""
    iter_dir = artifacts.iteration_dir(cfg.run_dir(), k)
    write_json(iter_dir / "lineage.json", {"iteration": k, "parent_iteration": 0, "parent_adapter": None})
    manifest = lifecycle.execute(data_gen.STAGE, cfg, iter_dir)
    return read_jsonl(iter_dir / "data_gen" / "prompts.jsonl"), manifest


def test_jsonl_prompts_are_drawn_with_the_seed_and_deduplicated(files, write_recipe, tiny_model_dir):
    from datasets import Dataset

    tmp, rows, seed = files
    src = {"path": "prompts.jsonl", "prompt_column": "question", "id_column": "qid"}
    cfg = _cfg(tmp, write_recipe, tiny_model_dir, "all", src, num_prompts=len(rows))
    prompts, manifest = _data_gen(cfg, 1)
    texts = [p["instruction"] for p in prompts]
    # every distinct question once (a row or its planted copy: whichever the seeded order reaches first); the copy
    # of a seed instruction and the second of the two copies are filtered as near duplicates
    assert sorted(t.lower() for t in texts) == sorted(q.lower() for q in QUESTIONS)
    assert manifest["metrics"]["prompts_rejected"] == {"near_duplicate": 2}
    assert seed not in texts and "planted-seed" not in {p["dataset_id"] for p in prompts}
    assert all(p["source"] == "dataset" and rows[p["dataset_row"]]["question"] == p["instruction"]
               and rows[p["dataset_row"]]["qid"] == p["dataset_id"] for p in prompts)
    responses = read_jsonl(cfg.run_dir() / "iter_001" / "data_gen" / "responses.jsonl")
    assert sorted({r["prompt_id"] for r in responses}) == sorted(p["id"] for p in prompts)

    # sample_size rows drawn with run.seed (datasets' shuffle), the same draw for the same seed
    drawn = {}
    for s in (0, 1):
        cfg = _cfg(tmp, write_recipe, tiny_model_dir, f"sample{s}", {**src, "sample_size": 4}, seed=s, num_prompts=8)
        drawn[s] = {p["instruction"].lower() for p in _data_gen(cfg, 1)[0]}
        sample = {r["question"].lower() for r in Dataset.from_list(rows).shuffle(seed=s).select(range(4))}
        assert drawn[s] == sample - {seed.lower()}  # a row and its planted copy: whichever comes first
    assert drawn[0] != drawn[1]


@pytest.mark.parametrize("pool", ["replace", "accumulate"])
def test_pool_policy_across_two_iterations(files, write_recipe, tiny_model_dir, pool):
    tmp, _, _ = files
    cfg = _cfg(tmp, write_recipe, tiny_model_dir, f"pool-{pool}", {"path": "prompts.parquet", "prompt_column": "text"},
               num_prompts=3, pool=pool)
    first, _ = _data_gen(cfg, 1)
    second, manifest = _data_gen(cfg, 2)
    new = [p for p in second if not p.get("carried")]
    assert len(first) == 3 and len(new) == 3
    # new prompts never repeat earlier ones, whatever the pool
    assert not {p["instruction"] for p in new} & {p["instruction"] for p in first}
    assert not {p["dataset_row"] for p in new} & {p["dataset_row"] for p in first}
    carried = [p for p in second if p.get("carried")]
    if pool == "replace":
        assert carried == [] and len(second) == 3
    else:  # the first iteration's prompts stay in the pool and are answered again by this iteration's model
        assert [{k: v for k, v in p.items() if k != "carried"} for p in carried] == first
        responses = read_jsonl(cfg.run_dir() / "iter_002" / "data_gen" / "responses.jsonl")
        assert {r["prompt_id"] for r in responses} == {p["id"] for p in second}
    assert manifest["metrics"]["prompts_pool"] == len(second)


def test_editing_the_dataset_file_changes_the_stage(files, write_recipe, tiny_model_dir):
    tmp, rows, _ = files
    path = tmp / "edited.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp, write_recipe, tiny_model_dir, "edited", {"path": "edited.jsonl", "prompt_column": "question"},
               num_prompts=2)
    _, before = _data_gen(cfg, 1)
    assert _data_gen(cfg, 1)[1] == before  # unchanged: the finished stage is skipped
    path.write_text(path.read_text().replace("volcanoes", "earthquakes"))
    with pytest.raises(StageConflict, match=r"changed: data_gen\.dataset\.path\)"):
        _data_gen(cfg, 1)
    assert read_json(cfg.run_dir() / "iter_001" / "data_gen" / "manifest.json") == before


def _bad(tmp, cli, dataset, **data_gen):
    """`selfreward validate` on a recipe with this dataset, next to an existing run directory: (rc, stderr lines)."""
    (tmp / "runs" / "bad").mkdir(parents=True, exist_ok=True)
    (tmp / "runs" / "bad" / "keep.txt").write_text("untouched")
    recipe = tmp / "bad.yaml"
    recipe.write_text(json.dumps({"run": {"name": "bad", "output_dir": str(tmp / "runs")},
                                  "data_gen": {"source": "dataset", "dataset": dataset, **data_gen}}))
    out = cli("validate", recipe)
    assert sorted(p.name for p in (tmp / "runs" / "bad").iterdir()) == ["keep.txt"]
    lines = [line for line in out.stderr.splitlines() if line.startswith("selfreward")]
    return out.returncode, lines, out.stderr


def test_bad_datasets_are_refused_at_validate_in_one_line(files, cli):
    tmp, _, _ = files
    (tmp / "empty.jsonl").write_text("\n")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp / "empty.parquet")
    cases = [
        ({"path": "prompts.jsonl", "prompt_column": "prompt"}, "no column 'prompt' (mapped as the prompt column); "
                                                              "columns are question, qid"),
        ({"path": "prompts.parquet", "prompt_column": "text", "id_column": "id"}, "no column 'id'"),
        ({"path": "empty.jsonl"}, "the dataset is empty"),
        ({"path": "empty.parquet", "prompt_column": "text"}, "the dataset is empty"),
        ({"path": "missing.jsonl"}, "file not found"),
        ({"path": "nobody/no-such-prompts"}, "hub dataset cannot be fetched offline (HF_HUB_OFFLINE=1)"),
    ]
    for dataset, message in cases:
        rc, lines, stderr = _bad(tmp, cli, dataset)
        assert rc == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert lines[0].startswith("selfreward: error: ") and "data_gen.dataset: " in lines[0], lines
        assert message in lines[0], lines
    rc, lines, _ = _bad(tmp, cli, None)
    assert rc == 2 and lines == [f"selfreward: error: {tmp / 'bad.yaml'}: data_gen: source: dataset needs "
                                 f"a dataset section (path, prompt_column, ...)"]
