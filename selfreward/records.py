"""JSONL records, atomic writes and fixed-size shards that survive a kill.

Contract: every file is written through a temporary file in the same directory and `os.replace`, so a reader
never sees half a file; JSONL rows are written with sorted keys so reruns are byte-identical. A shard names the
items it was computed from (a first line `{"__shard__": {"keys": [...]}}` with a digest of each item, which
`read_jsonl` skips), and is reused only for exactly those items, in that order.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from selfreward import stopping


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


SHARD_HEADER = "__shard__"


def _is_header(row) -> bool:
    return isinstance(row, dict) and len(row) == 1 and SHARD_HEADER in row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file (a shard's header line is not a row)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[1:] if rows and _is_header(rows[0]) else rows


class DamagedFile(ValueError):
    """A run-directory file that cannot be what the run wrote (cut, edited); the message is one line naming it."""


def read_json(path: str | os.PathLike):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path}: damaged: not valid JSON ({getattr(e, 'msg', e)})") from None


def item_key(item) -> str:
    """A digest of one work item (dicts by sorted keys): what a shard's rows were computed from."""
    text = json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reusable(path: Path, keys: list[str]) -> list[dict] | None:
    """A shard's rows when it was computed from exactly these items; None when it must be (re)done."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        header = json.loads(first) if first.strip() else None
    except json.JSONDecodeError:
        return None
    if not _is_header(header) or header[SHARD_HEADER].get("keys") != keys:
        return None  # cut at other boundaries (another shard size), other items, or an older format
    return read_jsonl(path)


def _note(path: Path, text: str) -> None:
    print(f"shard {'/'.join(path.parts[-4:])}: {text}", file=sys.stderr, flush=True)


def run_sharded(items: Sequence, shard_size: int, shard_dir: Path, prefix: str,
                work: Callable[[Sequence], list[dict]], desc: str) -> list[dict]:
    """Process `items` in fixed-size shards, each written atomically; a shard on disk is reused when it was
    computed from exactly the items it would now hold (so a changed shard_size or item list redoes it).

    A stop signal stops before the next shard; the shard in flight is finished when it can end within the
    stop budget and abandoned otherwise (stopping.abandonable), so a preempted run loses at most that shard.
    One line per computed or abandoned shard goes to stderr (what a preempted job's log shows).
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    out: list[dict] = []
    spent, done = 0.0, 0  # time and items of the shards computed here: the next shard's expected time
    bar = tqdm(total=len(items), desc=desc, unit="row", disable=None, dynamic_ncols=True)
    for index, start in enumerate(range(0, len(items), shard_size)):
        path = shard_dir / f"{prefix}-{index:05d}.jsonl"
        chunk = items[start:start + shard_size]
        keys = [item_key(item) for item in chunk]
        rows = _reusable(path, keys)
        if rows is None:
            if stopping.stop_requested():
                bar.close()
                raise stopping.Preempted(f"stopped before {path.name} on signal {stopping.stop_signal()}")
            began = time.monotonic()
            expected = spent / done * len(chunk) if done else None
            try:
                with stopping.abandonable(path.name, expected):
                    rows = work(chunk)
            except stopping.ShardAbandoned:
                bar.close()
                _note(path, f"abandoned after {time.monotonic() - began:.1f}s")
                raise
            write_atomic(path, dumps_jsonl([{SHARD_HEADER: {"keys": keys}}, *rows]))
            spent, done = spent + time.monotonic() - began, done + len(chunk)
            _note(path, f"{len(rows)} rows computed in {time.monotonic() - began:.1f}s")
        out.extend(rows)
        bar.update(len(chunk))
    bar.close()
    return out
