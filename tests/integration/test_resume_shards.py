"""Shards name their items, and a stop signal ends the shard in flight within the stop budget."""
import os
import signal
import time

import pytest

from selfreward import stopping
from selfreward.records import read_jsonl, run_sharded


@pytest.fixture
def handlers():
    old = {s: signal.getsignal(s) for s in (*stopping.STOP_SIGNALS, signal.SIGALRM)}
    stopping.install_preemption_handlers()
    yield
    stopping.clear_stop()
    for s, h in old.items():
        signal.signal(s, h)


def _work(calls, per_item_s=0.0):
    def work(chunk):
        calls.append(list(chunk))
        time.sleep(per_item_s * len(chunk))
        return [{"x": x, "judgment": j} for x in chunk for j in range(2)]  # two rows per item, as judging does
    return work


def test_changed_shard_size_never_reuses_rows_of_other_items(tmp_path):
    calls = []
    items = list(range(10))
    rows = run_sharded(items, 4, tmp_path, "part", _work(calls), "t")
    assert len(calls) == 3 and len(rows) == 20
    calls.clear()
    assert run_sharded(items, 4, tmp_path, "part", _work(calls), "t") == rows and calls == []  # all reused
    # another shard size cuts other chunks: the old files hold other items, and nothing is reused wrongly
    assert run_sharded(items, 5, tmp_path, "part", _work(calls), "t") == rows
    assert calls == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    calls.clear()
    changed = [0, 1, 2, 3, 4, 5, 6, 77, 8, 9]  # other items at the same boundaries: that shard is redone
    out = run_sharded(changed, 5, tmp_path, "part", _work(calls), "t")
    assert calls == [[5, 6, 77, 8, 9]] and [r["x"] for r in out][::2] == changed
    assert read_jsonl(tmp_path / "part-00000.jsonl") == rows[:10]  # the header line is not a row


def test_shard_in_flight_that_cannot_finish_in_time_is_abandoned(tmp_path, handlers, monkeypatch):
    monkeypatch.setenv("SELFREWARD_STOP_WITHIN", "0.5")
    calls = []
    work = _work(calls, per_item_s=0.3)  # 1.2 s per shard of 4

    def kill_during_second(chunk):
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGUSR2)  # arrives while this shard is in flight
        return work(chunk)

    started = time.monotonic()
    with pytest.raises(stopping.ShardAbandoned, match="part-00001.jsonl abandoned on signal 12"):
        run_sharded(list(range(12)), 4, tmp_path, "part", kill_during_second, "t")
    assert time.monotonic() - started < 1.2 + 0.5  # first shard + at most the budget
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.jsonl"]


def test_shard_in_flight_that_fits_the_budget_is_finished(tmp_path, handlers, monkeypatch):
    monkeypatch.setenv("SELFREWARD_STOP_WITHIN", "30")
    calls = []
    work = _work(calls, per_item_s=0.05)

    def kill_during_second(chunk):
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return work(chunk)

    with pytest.raises(stopping.Preempted, match="stopped before part-00002.jsonl on signal 15") as err:
        run_sharded(list(range(12)), 4, tmp_path, "part", kill_during_second, "t")
    assert not isinstance(err.value, stopping.ShardAbandoned)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]


def test_the_budget_bounds_a_shard_of_unknown_length(tmp_path, handlers, monkeypatch):
    """The first shard has no measured pace: it runs until 80% of the budget, then it is abandoned."""
    monkeypatch.setenv("SELFREWARD_STOP_WITHIN", "0.5")

    def slow(chunk):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)
        return [{"x": x} for x in chunk]

    started = time.monotonic()
    with pytest.raises(stopping.ShardAbandoned, match="the stop budget ran out"):
        run_sharded([1, 2], 2, tmp_path, "part", slow, "t")
    assert time.monotonic() - started < 1.0
