"""JSONL records, atomic writes and fixed-size shards that survive a kill."""
from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived: the shard in flight was finished and written, then the stage stopped."""


_stop_requested: list[int] = []


def install_preemption_handlers() -> None:
    """SLURM sends SIGTERM (or SIGUSR1 with --signal) before preemption: finish the shard, then stop."""
    def handler(signum, _frame):
        _stop_requested.append(signum)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def stop_requested() -> bool:
    return bool(_stop_requested)


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
            if stop_requested():
                bar.close()
                raise Preempted(f"stopped before {path.name} on signal {_stop_requested[0]}")
            rows = work(chunk)
            write_jsonl(path, rows)
        out.extend(rows)
        bar.update(len(chunk))
    bar.close()
    return out
