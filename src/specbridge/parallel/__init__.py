"""MPI work distribution and error accounting; torch.distributed process-group setup.

Everything here that decides *who does what* is a pure function (testable without MPI);
mpi4py and torch.distributed are imported only by the functions that need them.
"""

from specbridge.parallel.ddp import DistEnv, detect_dist_env, expand_hostlist, init_distributed
from specbridge.parallel.mpi import gather_error_counts, get_comm, rank0_logger
from specbridge.parallel.partition import (
    rank_items,
    split_evenly,
    weighted_partition,
)

__all__ = [
    "DistEnv",
    "detect_dist_env",
    "expand_hostlist",
    "init_distributed",
    "gather_error_counts",
    "get_comm",
    "rank0_logger",
    "rank_items",
    "split_evenly",
    "weighted_partition",
]
