"""Content digests of files."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """A short digest of the content of a stage's input files (``inputs``: name -> path or
    None; a None or missing file counts as "no file" under its name). A training stage adds
    it to its resume key, so that a rerun on changed inputs (new spectra, embeddings or
    pretrained weights) starts afresh instead of resuming the previous inputs' checkpoint.
    Index files hold their shards' fingerprints, so hashing the index covers the shards."""
    h = hashlib.sha256()
    for name in sorted(inputs):
        path = inputs[name]
        h.update(name.encode())
        h.update(sha256(path).encode() if path and Path(path).is_file() else b"-")
    return h.hexdigest()[:16]
