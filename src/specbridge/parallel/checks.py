"""Cluster self-checks: do MPI ranks and torch.distributed ranks really see each other?

Used by the rule ``cluster_check`` (``snakemake --profile slurm cluster_check``) before a long run,
and by the test suite on the local SLURM cluster.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from specbridge.atomic import write_json_atomic
from specbridge.parallel.ddp import destroy_distributed, detect_dist_env, init_distributed
from specbridge.parallel.mpi import get_comm


class CheckFailed(RuntimeError):
    """A cluster self-check found ranks that do not form the expected group."""


def check_mpi(output: str | Path, expect_size: int | None = None, comm: Any = None) -> dict:
    """Gather (rank, size, host, pid) from every MPI rank; rank 0 verifies and writes JSON.

    Raises CheckFailed (on rank 0) if ranks are not exactly 0..size-1 or the size is not
    ``expect_size``; a silent fall-back to lone rank-0 processes is caught this way.
    """
    from mpi4py import MPI

    comm = comm or get_comm(True)
    me = {"rank": comm.rank, "size": comm.size, "host": socket.gethostname(), "pid": os.getpid()}
    everyone = comm.gather(me, root=0)
    report = {}
    if comm.rank == 0:
        ranks = sorted(r["rank"] for r in everyone)
        report = {"world_size": comm.size, "ranks": ranks, "members": everyone,
                  "mpi_library": MPI.Get_library_version().splitlines()[0].strip()}
        problems = []
        if ranks != list(range(comm.size)):
            problems.append(f"ranks {ranks} are not 0..{comm.size - 1}")
        if expect_size is not None and comm.size != expect_size:
            problems.append(f"world size {comm.size}, expected {expect_size} (is PMI missing? "
                            "under SLURM use srun --mpi=pmi2 with the MPICH wheel)")
        report["ok"] = not problems
        report["problems"] = problems
        write_json_atomic(output, report)
    ok = comm.bcast(report.get("ok"), root=0)
    if not ok:
        raise CheckFailed("; ".join(report.get("problems", ["see rank 0"])))
    return report


def check_ddp(output: str | Path, expect_size: int | None = None,
              backend: str | None = None) -> dict:
    """Initialise torch.distributed, all-reduce each rank's (rank + 1), check the sum.

    Rank 0 writes a JSON report; every rank raises CheckFailed on a wrong result.
    """
    import torch
    import torch.distributed as dist

    env, device = init_distributed(detect_dist_env(), backend=backend)
    world = env.world_size
    value = torch.tensor([float(env.rank + 1)], device=device)
    gathered_hosts: list[Any] = [None] * world
    if env.is_distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        dist.all_gather_object(gathered_hosts, (env.rank, socket.gethostname()))
        used_backend = dist.get_backend()
    else:
        gathered_hosts = [(0, socket.gethostname())]
        used_backend = "none"
    expected = world * (world + 1) / 2
    problems = []
    if float(value.item()) != expected:
        problems.append(f"all-reduce gave {value.item()}, expected {expected}")
    if expect_size is not None and world != expect_size:
        problems.append(f"world size {world}, expected {expect_size}")
    report = {"launcher": env.launcher, "world_size": world, "backend": used_backend,
              "allreduce_sum": float(value.item()), "expected_sum": expected,
              "members": sorted(gathered_hosts), "master": f"{env.master_addr}:{env.master_port}",
              "ok": not problems, "problems": problems, "is_main": env.is_main}
    if env.is_main:
        write_json_atomic(output, report)
    destroy_distributed()
    if problems:
        raise CheckFailed("; ".join(problems))
    return report
