"""Launcher detection for torch.distributed: srun, torchrun, mpiexec, single process."""

from __future__ import annotations

import pytest

from specbridge.parallel import detect_dist_env, expand_hostlist


def test_expand_hostlist():
    assert expand_hostlist("nid[001-003,007],login1") == [
        "nid001", "nid002", "nid003", "nid007", "login1"]
    assert expand_hostlist("vm") == ["vm"]
    assert expand_hostlist("a[1-2]-b[08-09]") == ["a1-b08", "a1-b09", "a2-b08", "a2-b09"]


def test_srun_environment():
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "nid[004-007]", "SLURM_JOB_ID": "1234",
           "SLURM_STEP_ID": "0"}
    e = detect_dist_env(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank) == ("srun", 3, 8, 1)
    assert e.master_addr == "nid004"
    assert 20000 <= e.master_port < 60000
    # every task computes the same port; another job gets another one
    assert detect_dist_env({**env, "SLURM_PROCID": "0"}).master_port == e.master_port
    assert detect_dist_env({**env, "SLURM_JOB_ID": "1235"}).master_port != e.master_port


def test_batch_script_without_step_is_single_process():
    # the sbatch batch script sees SLURM_NTASKS but is one process, not a step of N tasks
    e = detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "9"})
    assert (e.launcher, e.world_size) == ("none", 1)


def test_torchrun_wins_over_slurm():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h1",
           "MASTER_PORT": "29999", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    e = detect_dist_env(env)
    assert (e.launcher, e.rank, e.world_size, e.master_addr, e.master_port) == (
        "torchrun", 1, 2, "h1", 29999)


def test_mpiexec_environments_defer_address_to_mpi():
    e = detect_dist_env({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
    assert (e.launcher, e.rank, e.world_size, e.local_rank) == ("mpiexec", 1, 2, 1)
    assert e.master_addr is None and e.master_port is None
    o = detect_dist_env({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4",
                         "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert (o.launcher, o.world_size) == ("mpiexec", 4)


def test_single_process():
    e = detect_dist_env({})
    assert (e.launcher, e.rank, e.world_size, e.is_distributed) == ("none", 0, 1, False)


def test_local_world_size():
    from specbridge.parallel.ddp import local_world_size

    e = detect_dist_env({"PMI_RANK": "0", "PMI_SIZE": "8"})
    assert local_world_size(e, {"MPI_LOCALNRANKS": "4"}) == 4
    assert local_world_size(e, {"SLURM_STEP_TASKS_PER_NODE": "2(x4)"}) == 2
    assert local_world_size(e, {}) == 8


def test_nccl_needs_one_gpu_per_rank():
    from specbridge.errors import UserError
    from specbridge.parallel.ddp import check_distinct_gpus

    check_distinct_gpus(["a/GPU-1", "a/GPU-2", "b/GPU-1", "b/GPU-2"])  # 2 nodes x 2 GPUs
    check_distinct_gpus(["a/GPU-1"])
    with pytest.raises(UserError, match="ranks 0 and 2 share GPU GPU-1 on a"):
        check_distinct_gpus(["a/GPU-1", "a/GPU-2", "a/GPU-1"])


def test_inference_device_falls_back_to_the_cpu(monkeypatch):
    import torch

    from specbridge.parallel.ddp import inference_device
    from specbridge.parallel.mpi import node_rank_size

    assert node_rank_size(None) == (0, 1)
    monkeypatch.setenv("SPECBRIDGE_DEVICE", "cpu")
    assert inference_device(3) == torch.device("cpu")
    monkeypatch.delenv("SPECBRIDGE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference_device(0).type == expected
