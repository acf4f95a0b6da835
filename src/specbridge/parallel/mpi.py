"""MPI helpers in the desispec manner: optional communicator, rank-0 logging, gathered errors."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_MPI_RANK_VARS = ("PMI_RANK", "PMIX_RANK")


def launched_under_mpi() -> bool:
    """True if this process looks like one of several started by mpiexec/srun.

    A launch of a single task (``srun -n 1``, as Snakemake's SLURM job step wraps plain rules,
    or ``mpiexec -n 1``) does not count: one rank needs no MPI, and initialising it there can
    fail when the launcher's PMI flavour differs from the MPI library's.
    """
    sizes = [os.environ[v] for v in _MPI_SIZE_VARS if v in os.environ]
    if sizes:
        return any(s.strip().isdigit() and int(s) > 1 for s in sizes)
    return any(v in os.environ for v in _MPI_RANK_VARS)


def get_comm(use_mpi: bool | None = None) -> Any | None:
    """Return ``MPI.COMM_WORLD``, or None when running without MPI.

    ``use_mpi=None`` decides from the environment: MPI is initialised only when the process was
    started by an MPI launcher, so a plain ``specbridge ...`` on a login node never touches MPI.
    """
    if use_mpi is None:
        use_mpi = launched_under_mpi()
    if not use_mpi:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def comm_rank_size(comm: Any | None) -> tuple[int, int]:
    """(rank, size) of ``comm``; (0, 1) without MPI."""
    if comm is None:
        return 0, 1
    return comm.rank, comm.size


def node_rank_size(comm: Any | None) -> tuple[int, int]:
    """(this rank's index among the ranks of ``comm`` on its node, their number); (0, 1)
    without MPI. Collective over ``comm``."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.rank, node.size
    finally:
        node.Free()


def ranks_on_node(comm: Any | None) -> int:
    """Number of ranks of ``comm`` on this node (1 without MPI)."""
    return node_rank_size(comm)[1]


def cores_per_rank(local_ranks: int) -> int:
    """CPU cores a rank may use: SLURM_CPUS_PER_TASK under SLURM, else the node's cores shared
    evenly among its ``local_ranks`` ranks (at least 1)."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return max(1, (os.cpu_count() or 1) // max(1, local_ranks))


def rank0_logger(name: str, comm: Any | None = None, level: int = logging.INFO) -> logging.Logger:
    """A logger that emits on rank 0 at ``level`` and on other ranks only warnings and above.

    Messages are prefixed with the rank when running with more than one rank.
    """
    rank, size = comm_rank_size(comm)
    logger = logging.getLogger(f"{name}.rank{rank}" if size > 1 else name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        prefix = f"[rank {rank}/{size}] " if size > 1 else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level if rank == 0 else max(level, logging.WARNING))
    return logger


def gather_error_counts(comm: Any | None, counts: Mapping[str, int]) -> dict[str, int] | None:
    """Sum per-reason error counts over all ranks onto rank 0.

    Parameters
    ----------
    comm : MPI communicator or None
    counts : mapping reason -> number of failed items on this rank

    Returns
    -------
    On rank 0 (or without MPI) the summed counts over all ranks, sorted by reason; None elsewhere.
    """
    if comm is None:
        return dict(sorted(Counter(counts).items()))
    gathered = comm.gather(dict(counts), root=0)
    if comm.rank != 0:
        return None
    total: Counter[str] = Counter()
    for c in gathered:
        total.update(c)
    return dict(sorted(total.items()))


def bcast_from_rank0(comm: Any | None, prepare: Callable[[], Any],
                     errors: tuple[type[BaseException], ...] = (Exception,)) -> Any:
    """Run ``prepare()`` on rank 0 only and broadcast its result to every rank.

    When it raises one of ``errors``, every rank raises :class:`specbridge.errors.UserError`
    with the same one-line message (the reason, naming the file where the error does),
    instead of waiting forever in a broadcast that rank 0 never reaches.
    """
    from specbridge.errors import UserError, describe

    payload = err = None
    if comm_rank_size(comm)[0] == 0:
        try:
            payload = prepare()
        except errors as exc:
            err = str(exc) if isinstance(exc, UserError) else _with_file(exc, describe(exc))
    if comm is not None:
        payload, err = comm.bcast((payload, err), root=0)
    if err is not None:
        raise UserError(err)
    return payload


def _with_file(exc: BaseException, reason: str) -> str:
    name = getattr(exc, "filename", None)
    return f"{name}: {reason}" if name and str(name) not in reason else reason


def run_or_abort(comm: Any | None, log: logging.Logger, func: Callable[..., Any],
                 *args: Any) -> Any:
    """``func(*args)``; an exception on one rank of several is logged as one line and aborts
    the whole MPI job at once (the other ranks would block in their next collective call,
    under srun until the walltime). With one rank the exception propagates to the CLI, which
    prints it as one line."""
    try:
        return func(*args)
    except Exception as exc:
        rank, size = comm_rank_size(comm)
        if size > 1:
            from specbridge.errors import UserError, describe

            msg = str(exc) if isinstance(exc, UserError) else describe(exc)
            log.error("rank %d failed: %s; aborting the MPI job", rank, msg)
            log.debug("traceback", exc_info=True)
            for h in log.handlers:
                h.flush()
            sys.stderr.flush()
            # the launcher forwards output asynchronously and tears the job down on Abort:
            # give it a moment to pass this rank's last lines on, or they can be lost
            time.sleep(0.5)
            comm.Abort(1)
        raise
