"""Real MPI ranks (MPICH's mpiexec) and real torch.distributed processes, no SLURM."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.mpi


def _run(cmd, env, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_check_mpi_two_ranks(mpiexec, tool_env, tmp_path):
    out = tmp_path / "mpi.json"
    _run([mpiexec, "-n", "2", "specbridge", "check-mpi", "--expect-size", "2", "--output",
          str(out)], tool_env)
    report = json.loads(out.read_text())
    assert report["ok"] and report["world_size"] == 2 and report["ranks"] == [0, 1]
    assert len({m["pid"] for m in report["members"]}) == 2


def test_check_mpi_detects_wrong_size(mpiexec, tool_env, tmp_path):
    r = subprocess.run([mpiexec, "-n", "2", "specbridge", "check-mpi", "--expect-size", "3",
                        "--output", str(tmp_path / "m.json")],
                       capture_output=True, text=True, env=tool_env, timeout=300)
    assert r.returncode != 0
    assert "world size 2, expected 3" in r.stderr


def test_check_ddp_allreduce_under_mpiexec(mpiexec, tool_env, tmp_path):
    out = tmp_path / "ddp.json"
    _run([mpiexec, "-n", "2", "specbridge", "check-ddp", "--expect-size", "2", "--output",
          str(out)], tool_env)
    report = json.loads(out.read_text())
    assert report["ok"] and report["launcher"] == "mpiexec" and report["backend"] == "gloo"
    assert report["allreduce_sum"] == 3.0


def test_check_ddp_under_torchrun(tool_env, tmp_path):
    out = tmp_path / "ddp.json"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
          "-m", "specbridge", "check-ddp", "--expect-size", "2", "--output", str(out)],
         tool_env)
    report = json.loads(out.read_text())
    assert report["ok"] and report["launcher"] == "torchrun" and report["world_size"] == 2


GATHER_SCRIPT = """
import json, sys
from specbridge.parallel import gather_error_counts, get_comm
comm = get_comm()
counts = {"nan_flux": comm.rank + 1, f"only_rank{comm.rank}": 1}
total = gather_error_counts(comm, counts)
if comm.rank == 0:
    json.dump(total, open(sys.argv[1], "w"))
else:
    assert total is None
"""


def test_gather_error_counts_over_ranks(mpiexec, tool_env, tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    out = tmp_path / "counts.json"
    _run([mpiexec, "-n", "3", sys.executable, str(script), str(out)], tool_env)
    assert json.loads(out.read_text()) == {"nan_flux": 6, "only_rank0": 1, "only_rank1": 1,
                                           "only_rank2": 1}


def test_gather_error_counts_without_mpi():
    from specbridge.parallel import gather_error_counts

    assert gather_error_counts(None, {"b": 2, "a": 1}) == {"a": 1, "b": 2}
