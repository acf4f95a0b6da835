"""Work distribution is a pure function, testable without MPI."""

from __future__ import annotations

import numpy as np
import pytest

from specbridge.parallel import rank_items, split_evenly, weighted_partition


@pytest.mark.parametrize("nranks", [1, 2, 3, 7, 64])
def test_weighted_partition_assigns_each_item_once_and_balances(nranks):
    rng = np.random.default_rng(nranks)
    weights = rng.integers(1, 5000, size=200).astype(float)
    groups = weighted_partition(weights, nranks)
    assert len(groups) == nranks
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(weights)))
    loads = np.array([weights[g].sum() for g in groups])
    # greedy LPT bound: no group exceeds the mean by more than the largest item
    assert loads.max() <= weights.sum() / nranks + weights.max()


def test_weighted_partition_known_answer():
    # 10 -> r0; 8 -> r1; 5 -> r1 (8 < 10); 3 -> r0 (10 < 13); 1 -> r0 (13 == 13, lowest rank)
    assert weighted_partition([3, 10, 1, 8, 5], 2) == [[0, 1, 2], [3, 4]]


def test_weighted_partition_more_ranks_than_items_and_determinism():
    groups = weighted_partition([5, 5], 4)
    assert sorted(map(len, groups)) == [0, 0, 1, 1]
    assert weighted_partition([2, 2, 2, 2], 2) == weighted_partition([2, 2, 2, 2], 2)
    assert rank_items([3, 10, 1, 8, 5], 1, 2) == [3, 4]


@pytest.mark.parametrize("bad", [[-1.0, 2.0], [np.nan], [[1, 2]]])
def test_weighted_partition_rejects_bad_weights(bad):
    with pytest.raises(ValueError):
        weighted_partition(bad, 2)


def test_split_evenly():
    assert split_evenly(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_evenly(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert split_evenly(0, 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError):
        split_evenly(5, 0)


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, False),  # srun -n 1 job step
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}, True),
    ({"PMI_SIZE": "1", "PMI_RANK": "0"}, False),                  # mpiexec -n 1
    ({"PMI_SIZE": "4", "PMI_RANK": "3"}, True),
    ({"PMIX_RANK": "0"}, True),                                   # size unknown: assume MPI
])
def test_launched_under_mpi_needs_more_than_one_task(monkeypatch, env, expected):
    from specbridge.parallel.mpi import _MPI_RANK_VARS, _MPI_SIZE_VARS, launched_under_mpi

    for v in (*_MPI_SIZE_VARS, *_MPI_RANK_VARS):
        monkeypatch.delenv(v, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launched_under_mpi() is expected
