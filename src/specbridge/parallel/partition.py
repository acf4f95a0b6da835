"""Pure work-distribution functions: who processes what, decided without MPI."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def weighted_partition(weights: Sequence[float], nranks: int) -> list[list[int]]:
    """Assign items to ``nranks`` groups so that the summed weights are as even as possible.

    Greedy longest-processing-time: items in decreasing weight go to the currently lightest group
    (ties broken by the lowest group index, so the result is deterministic).

    Parameters
    ----------
    weights : sequence of float, shape (n_items,)
        Cost of each item, e.g. the number of spectra in a manifest shard. Must be >= 0.
    nranks : int
        Number of groups (MPI ranks), >= 1.

    Returns
    -------
    list of ``nranks`` lists of item indices, each sorted ascending. Groups may be empty when
    there are fewer items than ranks.
    """
    if nranks < 1:
        raise ValueError(f"nranks must be >= 1, got {nranks}")
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError("weights must be one-dimensional")
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    groups: list[list[int]] = [[] for _ in range(nranks)]
    heap = [(0.0, r) for r in range(nranks)]
    # stable sort on -w keeps the original order among equal weights
    for i in np.argsort(-w, kind="stable"):
        load, r = heapq.heappop(heap)
        groups[r].append(int(i))
        heapq.heappush(heap, (load + float(w[i]), r))
    return [sorted(g) for g in groups]


def split_evenly(n: int, nranks: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges splitting ``n`` items into ``nranks`` near-equal parts.

    The first ``n % nranks`` ranges are one item longer.
    """
    if nranks < 1:
        raise ValueError(f"nranks must be >= 1, got {nranks}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, nranks)
    out, start = [], 0
    for r in range(nranks):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def rank_items(weights: Sequence[float], rank: int, nranks: int) -> list[int]:
    """The item indices that ``rank`` of ``nranks`` owns under :func:`weighted_partition`."""
    if not 0 <= rank < nranks:
        raise ValueError(f"rank {rank} outside 0..{nranks - 1}")
    return weighted_partition(weights, nranks)[rank]
