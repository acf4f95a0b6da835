"""Fault injection for the fault-tolerance tests (a real SIGKILL, not a mock).

With ``SPECBRIDGE_FAULT="<stage>:<rank>:<n>"`` in the environment, rank ``<rank>`` of
``<stage>`` (preprocess, infer, train) kills itself with SIGKILL right after its ``n``-th unit
of work (a shard written, a training batch). Unset, this costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def kill_point(stage: str, rank: int, done: int) -> None:
    """SIGKILL this process if SPECBRIDGE_FAULT names (stage, rank, done)."""
    spec = os.environ.get("SPECBRIDGE_FAULT")
    if not spec:
        return
    s, r, n = spec.split(":")
    if s == stage and int(r) == rank and int(n) == done:
        os.kill(os.getpid(), signal.SIGKILL)
