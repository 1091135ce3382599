"""Datasets a recipe names: prompts for data_gen, instruction-following and judge examples for the SFT bootstrap.

Contract: a source is a local JSONL/JSON/Parquet file (or a directory `datasets` can read) or a Hugging Face hub
id, loaded with `datasets.load_dataset`, plus a column mapping and an optional `sample_size` drawn with the run
seed (`Dataset.shuffle(seed).select(range(n))`). `check` validates a source without loading a model: the file
exists, the mapped columns exist, the data is not empty, and a hub id is not asked for while HF_HUB_OFFLINE=1
forbids fetching it (unless it is in the local cache); it raises `DatasetError` with one line. `load` returns the
rows (mapped columns only, with their row index); `path_identity` is how identities hash a local file: by content.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DatasetError(ValueError):
    """A dataset that cannot be used: the message is one line."""


class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    path: str = Field(description="A local .jsonl/.json/.parquet file (relative to the recipe) or directory, or a "
                                  "hub dataset id (org/name), as datasets.load_dataset takes it.")
    name: str | None = Field(None, description="Hub dataset configuration name (load_dataset's `name`).")
    split: str = Field("train", description="Split to read (a local file has only `train`).")
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit) to pin.")
    sample_size: int | None = Field(None, ge=1, description="Rows drawn with run.seed (shuffle, then the first n); "
                                                            "null = every row.")

    def columns(self) -> dict[str, str]:
        """role -> mapped column name, for the columns that must exist."""
        return {}

    def is_local(self) -> bool:
        p = Path(os.path.expanduser(self.path))
        return p.exists() or self.path.startswith((".", "/", "~")) or p.suffix in _BUILDERS


class PromptDataset(DatasetSource):
    prompt_column: str = Field("prompt", description="Column holding the prompt text.")
    id_column: str | None = Field(None, description="Column with a row id kept in each prompt's provenance.")

    def columns(self) -> dict[str, str]:
        return {"prompt": self.prompt_column, **({"id": self.id_column} if self.id_column else {})}


class InstructionDataset(DatasetSource):
    messages_column: str | None = Field(None, description="Column of chat messages ([{role, content}], the last "
                                                          "one the assistant's); when set, prompt/completion "
                                                          "columns are not read.")
    prompt_column: str = Field("prompt", description="Column holding the instruction text.")
    completion_column: str = Field("completion", description="Column holding the target response text.")

    def columns(self) -> dict[str, str]:
        if self.messages_column:
            return {"messages": self.messages_column}
        return {"prompt": self.prompt_column, "completion": self.completion_column}


class JudgeDataset(DatasetSource):
    instruction_column: str = Field("instruction", description="Column holding the judged instruction.")
    response_column: str = Field("response", description="Column holding the judged response.")
    judgment_column: str = Field("judgment", description="Column holding the target judgment text, ending in the "
                                                         "score line the judge's parser reads (`Score: N`).")

    def columns(self) -> dict[str, str]:
        return {"instruction": self.instruction_column, "response": self.response_column,
                "judgment": self.judgment_column}


def _local_path(src: DatasetSource) -> Path:
    return Path(os.path.expanduser(src.path))


def path_identity(path: str) -> str | dict | None:
    """A local dataset by content, as run and stage identities hash it (editing the file changes the config; a
    moved checkout does not); None for a hub id, which is identified by its name and revision."""
    from selfreward.digests import file_digest

    p = Path(os.path.expanduser(path))
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        return {str(f.relative_to(p)): file_digest(f) for f in sorted(p.rglob("*")) if f.is_file()}
    return None


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir()


def _empty_file(p: Path) -> bool:
    if _BUILDERS[p.suffix] == "json":
        return not p.read_bytes().strip()
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(p).metadata.num_rows == 0
    except Exception as e:  # not a parquet file at all
        raise DatasetError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _open(src: DatasetSource):
    """The split as a `datasets.Dataset` (downloading a hub dataset unless offline)."""
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()  # one line per problem, no progress noise
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    p = _local_path(src)
    try:
        if p.is_file():
            if p.suffix not in _BUILDERS:
                raise DatasetError(f"{p}: expected a .jsonl, .json or .parquet file")
            if _empty_file(p):  # datasets fails on these with errors that do not say so
                raise DatasetError(f"{src.path}: the dataset is empty")
            return load_dataset(_BUILDERS[p.suffix], data_files=str(p), split="train")
        if p.is_dir():
            return load_dataset(str(p), split=src.split)
        return load_dataset(src.path, src.name, split=src.split, revision=src.revision)
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many types (DatasetGenerationError, ArrowInvalid, ValueError, ...)
        while e.__cause__ is not None:  # "An error occurred while generating the dataset" hides the reason
            e = e.__cause__
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"{src.path}: cannot be read by datasets.load_dataset ({first})") from None


def check(src: DatasetSource) -> None:
    """Validate a source before any model loads; raises DatasetError (one line)."""
    p = _local_path(src)
    if src.is_local() and not p.exists():
        raise DatasetError(f"{src.path}: file not found")
    if not src.is_local():
        parts = src.path.split("/")
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"{src.path}: neither an existing file nor a hub dataset id (org/name)")
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(src.path):
            raise DatasetError(f"{src.path}: hub dataset cannot be fetched offline (HF_HUB_OFFLINE=1) and is not "
                               f"in the local cache")
    ds = _open(src)
    _check_columns(src, ds.column_names)
    if len(ds) == 0:
        raise DatasetError(f"{src.path}: the dataset is empty (split {src.split!r})")


def _check_columns(src: DatasetSource, present: list[str]) -> None:
    for role, column in src.columns().items():
        if column not in present:
            raise DatasetError(f"{src.path}: no column {column!r} (mapped as the {role} column); columns are "
                               f"{', '.join(present) or 'none'}")


def load(src: DatasetSource, seed: int) -> list[dict]:
    """Rows {row, <role>: value} for the mapped columns; with sample_size, `sample_size` rows drawn with `seed`."""
    ds = _open(src)
    _check_columns(src, ds.column_names)
    cols = src.columns()
    ds = ds.select_columns(sorted(set(cols.values())))
    ds = ds.add_column("__row__", list(range(len(ds))))
    if src.sample_size is not None and src.sample_size < len(ds):
        ds = ds.shuffle(seed=seed).select(range(src.sample_size))
    return [{"row": r["__row__"], **{role: r[col] for role, col in cols.items()}} for r in ds]
