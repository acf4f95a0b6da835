"""Atomic outputs: write under a temporary name in the same directory, then rename.

A killed job therefore never leaves a file under its final name that looks complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    The temporary name keeps the suffix (``.fits``, ``.h5``...) so libraries that sniff it work.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    noise = io.StringIO()
    try:
        # h5py prints a stack per object it cannot free after a failed write (disk full):
        # the failure itself is raised and reported once, so that echo is dropped
        with contextlib.redirect_stderr(noise):
            yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        sys.stderr.write(noise.getvalue())
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
