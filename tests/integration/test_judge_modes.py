"""Both scoring modes on the embedded SmolLM2 through vLLM: valid judgments, recorded mass, agreeing ranges."""
import pytest

from selfreward import constitution, engine as engines
from selfreward.config import Config, RECIPES_DIR
from selfreward.engine import Request, Sampling
from selfreward.judging import judge_items
from selfreward.records import read_jsonl


@pytest.fixture(scope="module")
def setup():
    cfg = Config()
    cfg.judge.max_tokens, cfg.judge.reason_max_chars, cfg.judge.num_judgments = 64, 100, 2
    engine = engines.for_config(cfg)
    probes = read_jsonl(RECIPES_DIR / "probes" / "default.jsonl")[:8]
    outs = engine.generate([Request([{"role": "user", "content": p["prompt"]}], 0) for p in probes],
                           Sampling(temperature=0.0, max_tokens=48))
    items = [{"id": p["id"], "instruction": p["prompt"], "response": o.text} for p, o in zip(probes, outs)]
    return cfg, engine, items, constitution.load(cfg.judge.constitution)


def _judge(cfg, **changes):
    """A copy of the judge section with changes: no test mutates the module's config, so order cannot matter."""
    return cfg.judge.model_copy(update=changes)


def test_logprob_mode_is_valid_and_records_mass(setup):
    cfg, engine, items, con = setup
    judge = _judge(cfg, mode="logprob")
    rows = judge_items(engine, con, judge, items, None, (0, "t"))
    assert len(rows) == len(items)  # one pass per response
    valid = [r for r in rows if r["score"] is not None]
    assert len(valid) / len(rows) >= 0.95, rows
    assert all(0 <= r["score"] <= 5 and judge.min_score_mass <= r["score_mass"] <= 1 for r in valid)
    assert len({round(r["score"], 3) for r in valid}) > 1  # expectations, not a constant
    # nothing has all its mass on the digits: every judgment becomes invalid
    strict = judge_items(engine, con, _judge(cfg, mode="logprob", min_score_mass=1.0), items, None, (0, "t"))
    assert all(r["score"] is None and r["invalid"] == "low_score_mass" for r in strict)


def test_sampled_mode_structured_is_valid(setup):
    cfg, engine, items, con = setup
    rows = judge_items(engine, con, _judge(cfg, mode="sampled"), items, None, (0, "t"))
    assert len(rows) == 2 * len(items)
    assert sum(r["score"] is not None for r in rows) / len(rows) >= 0.95
    assert all(r["raw"].rstrip()[-8:-1] == "Score: " for r in rows if r["score"] is not None)


def test_no_test_changed_the_shared_config(setup):
    cfg, *_ = setup
    assert cfg.judge == Config().judge.model_copy(update={"max_tokens": 64, "reason_max_chars": 100, "num_judgments": 2})


def test_per_principle_constitution_records_subscores(setup):
    cfg, engine, items, _ = setup
    con = constitution.load(RECIPES_DIR / "constitutions" / "harmless-honest.md")
    rows = judge_items(engine, con, _judge(cfg, mode="logprob"), items[:3], None, (0, "t"))
    for r in rows:
        assert set(r["subscores"]) == {"harmless", "honest"} and set(r["raw"]) == {"harmless", "honest"}
        if r["score"] is not None:
            assert r["score"] == pytest.approx(sum(r["subscores"].values()) / 2, abs=1e-5)
