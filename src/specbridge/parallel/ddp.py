"""torch.distributed process-group setup under srun, torchrun or mpiexec (gloo on CPU, nccl on GPU).

The launcher is read from the environment:

========== ============================================ ===============================
launcher   rank / world size                            rendezvous address
========== ============================================ ===============================
torchrun   RANK, WORLD_SIZE, LOCAL_RANK                 MASTER_ADDR, MASTER_PORT
srun       SLURM_PROCID, SLURM_STEP_NUM_TASKS,          first host of SLURM_STEP_NODELIST;
           SLURM_LOCALID                                port derived from job and step id
mpiexec    PMI_RANK/PMI_SIZE (MPICH, Intel MPI),        rank 0's host name and a free port,
           OMPI_COMM_WORLD_* (Open MPI), PMIX_RANK       broadcast with mpi4py
none       0 / 1                                        (no process group)
========== ============================================ ===============================

MASTER_ADDR / MASTER_PORT in the environment override the derived address under srun and mpiexec.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a multi-process job.

    ``master_addr``/``master_port`` are None when they must still be agreed over MPI.
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM host list, e.g. ``"nid[001-003,007],login1"`` -> 4 + 1 host names.

    Zero padding of ranges is kept; several bracket groups in one name are expanded in order.
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist):
        hosts.extend(_expand_one(item))
    return hosts


def _split_top_level(s: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in s.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [x for x in out if x]


def _expand_one(item: str) -> list[str]:
    m = re.search(r"\[([^\]]+)\]", item)
    if not m:
        return [item]
    head, tail = item[: m.start()], item[m.end():]
    out = []
    for part in m.group(1).split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                out.extend(_expand_one(f"{head}{n:0{width}d}{tail}"))
        else:
            out.extend(_expand_one(f"{head}{part}{tail}"))
    return out


def _env_int(env: dict[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        if name in env and env[name] != "":
            return int(env[name])
    return default


def detect_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Work out launcher, rank, world size and rendezvous address from environment variables.

    Pure function of ``environ`` (default ``os.environ``); touches neither MPI nor torch.
    """
    env = dict(os.environ if environ is None else environ)
    port_override = _env_int(env, "MASTER_PORT")
    addr_override = env.get("MASTER_ADDR") or None

    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]),
                       _env_int(env, "LOCAL_RANK", default=0), addr_override or "127.0.0.1",
                       port_override or 29500)

    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
        job = _env_int(env, "SLURM_JOB_ID", default=0) or 0
        step = _env_int(env, "SLURM_STEP_ID", default=0) or 0
        # a port that every task computes alike, distinct between concurrent jobs and steps
        port = 20000 + (job * 16 + step) % 40000
        return DistEnv("srun", int(env["SLURM_PROCID"]), world,
                       _env_int(env, "SLURM_LOCALID", default=0) or 0,
                       addr_override or expand_hostlist(nodelist)[0], port_override or port)

    mpi_rank = _env_int(env, "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
    mpi_size = _env_int(env, "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    if mpi_rank is not None and mpi_size is not None:
        local = _env_int(env, "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", default=0) or 0
        return DistEnv("mpiexec", mpi_rank, mpi_size, local, addr_override, port_override)

    return DistEnv("none", 0, 1, 0, "127.0.0.1", None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _agree_over_mpi(env: DistEnv) -> DistEnv:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.size != env.world_size:
        raise RuntimeError(f"MPI world size {comm.size} differs from the launcher's "
                           f"{env.world_size}: is mpi4py built against the MPI that launched us?")
    addr, port = env.master_addr, env.master_port
    if comm.rank == 0:
        addr = addr or socket.gethostname()
        port = port or _free_port()
    addr, port = comm.bcast((addr, port), root=0)
    return DistEnv(env.launcher, env.rank, env.world_size, env.local_rank, addr, port)


def local_world_size(env: DistEnv, environ: dict[str, str] | None = None) -> int:
    """Number of ranks of this job on this node (torchrun, MPICH/Intel MPI, Open MPI, SLURM),
    else the world size."""
    e = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if e.get(key):
            return int(e[key])
    if e.get("SLURM_STEP_TASKS_PER_NODE"):
        return int(re.match(r"\d+", e["SLURM_STEP_TASKS_PER_NODE"]).group())
    return env.world_size


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def inference_device(local_rank: int = 0) -> Any:
    """The torch device for a rank's forward passes (embed, infer): ``cuda:<local_rank mod
    GPUs>`` when CUDA is available, else ``cpu``. ``SPECBRIDGE_DEVICE=cpu`` keeps them on the
    CPU."""
    import torch

    if os.environ.get("SPECBRIDGE_DEVICE", "").lower() == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def check_distinct_gpus(gpus: list[str]) -> None:
    """Raise :class:`UserError` if two ranks use the same GPU. ``gpus``: one
    ``"<host>/<GPU UUID>"`` per rank, in rank order (nccl refuses two ranks on one GPU with an
    error that names neither the cause nor the fix)."""
    from specbridge.errors import UserError

    first: dict[str, int] = {}
    for rank, key in enumerate(gpus):
        if key in first:
            host, _, uuid = key.partition("/")
            raise UserError(f"ranks {first[key]} and {rank} share GPU {uuid} on {host}: nccl "
                            "needs one GPU per rank; start at most one rank per GPU (SLURM: "
                            "--ntasks-per-node equal to --gpus-per-node, or --gpus-per-task=1)")
        first[key] = rank


def _check_gpus_over_store(env: DistEnv, device: Any) -> None:
    """Every rank publishes its host and GPU UUID in the process group's store (no nccl
    collective: that is what would fail) and checks that no two ranks share a GPU."""
    import torch
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()
    me = f"{socket.gethostname()}/{torch.cuda.get_device_properties(device).uuid}"
    store.set(f"specbridge-gpu/{env.rank}", me)
    check_distinct_gpus([store.get(f"specbridge-gpu/{r}").decode()
                         for r in range(env.world_size)])


def init_distributed(env: DistEnv | None = None, backend: str | None = None,
                     timeout_s: float = 300.0) -> tuple[DistEnv, Any]:
    """Initialise the default torch.distributed process group for this process.

    Returns ``(env, device)``: the resolved :class:`DistEnv` and the ``torch.device`` this rank
    should use (``cuda:<local_rank mod n_gpus>`` with nccl, else ``cpu``). With a world size of 1
    no process group is created, so single-process training needs no rendezvous.
    """
    import torch
    import torch.distributed as dist

    env = env or detect_dist_env()
    backend = backend or default_backend()
    if backend == "nccl":
        if torch.cuda.device_count() == 0:
            from specbridge.errors import UserError

            raise UserError("the nccl backend needs CUDA GPUs, and this node has none")
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # share the node's cores between the ranks on it instead of oversubscribing them
        from specbridge.parallel.mpi import cores_per_rank

        torch.set_num_threads(cores_per_rank(local_world_size(env)))
    if not env.is_distributed:
        return env, device
    if env.master_addr is None or env.master_port is None:
        env = _agree_over_mpi(env)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    if backend == "nccl":
        _check_gpus_over_store(env, device)
    return env, device


def destroy_distributed() -> None:
    """Tear down the default process group if one exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
