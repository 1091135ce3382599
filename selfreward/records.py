"""JSONL records, atomic writes and fixed-size shards that survive a kill.

Contract: every file is written through a temporary file in the same directory and `os.replace`, so a reader
never sees half a file; JSONL rows are written with sorted keys so reruns are byte-identical.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from selfreward import launch


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file in the same directory and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dumps_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_atomic(path, dumps_jsonl(rows))


def write_json(path: str | os.PathLike, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_sharded(items: Sequence, shard_size: int, shard_dir: Path, prefix: str,
                work: Callable[[Sequence], list[dict]], desc: str) -> list[dict]:
    """Process `items` in fixed-size shards, each written atomically; shards already on disk are reused.

    A kill loses at most the shard in flight. Shard boundaries depend only on `items` and `shard_size`, so a
    resumed run computes exactly the shards an uninterrupted one would.
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    out: list[dict] = []
    starts = range(0, len(items), shard_size)
    bar = tqdm(total=len(items), desc=desc, unit="row", disable=None, dynamic_ncols=True)
    for index, start in enumerate(starts):
        path = shard_dir / f"{prefix}-{index:05d}.jsonl"
        chunk = items[start:start + shard_size]
        rows = read_jsonl(path) if path.exists() else None
        if rows is None or len(rows) != len(chunk):  # a shard cut at other boundaries is redone
            if launch.stop_requested():
                bar.close()
                raise launch.Preempted(f"stopped before {path.name} on signal {launch.stop_signal()}")
            rows = work(chunk)
            write_jsonl(path, rows)
        out.extend(rows)
        bar.update(len(chunk))
    bar.close()
    return out
