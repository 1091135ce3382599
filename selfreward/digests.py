"""Content digests of files: what manifests, stage identities and constitutions hash a file by.

Contract: `sha256_file` is the hex sha256 of a file's bytes, read in chunks (a model's weights fit no memory);
`file_digest` is the same digest as stage identities spell it (`sha256:<hex>`): recipes name files by path, and
identities hash their content, so moving a checkout changes nothing. Imports nothing of selfreward.
"""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Recipes name files by path; hashes use their content, so moving a checkout changes nothing."""
    return "sha256:" + sha256_file(path)
