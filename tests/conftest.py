"""Shared fixtures: repository paths, the MPI launcher, and the local SLURM test cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VENV_BIN = Path(sys.executable).parent


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_or_skip(reason: str, required_env: str) -> None:
    """Skip with ``reason`` — unless the suite runs in CI or with ``required_env`` set, where a
    missing prerequisite is a failure, so that these tests can never silently vanish."""
    if in_ci() or os.environ.get(required_env):
        pytest.fail(f"required but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        require_or_skip(f"{data} is absent", "SPECBRIDGE_REQUIRE_SHARED")
    return data


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """Environment for subprocesses: the virtual environment's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="session")
def mpiexec(tool_env) -> str:
    exe = shutil.which("mpiexec", path=tool_env["PATH"])
    if exe is None:
        require_or_skip("mpiexec not found (pip install mpich)", "SPECBRIDGE_REQUIRE_MPI")
    return exe


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM cluster (munged, slurmctld, slurmd) for the session.

    Started by tests/cluster/local_slurm.sh and stopped afterwards (only the daemons it
    started). Skips where it cannot run (not root, no apt) — fails instead in CI or with
    SPECBRIDGE_REQUIRE_SLURM=1.
    """
    script = REPO / "tests" / "cluster" / "local_slurm.sh"
    check = subprocess.run(["bash", str(script), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        require_or_skip(f"no SLURM test cluster here: {check.stderr.strip()}",
                        "SPECBRIDGE_REQUIRE_SLURM")
    state = tmp_path_factory.mktemp("slurm-state")
    start = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True,
                           text=True, timeout=900)
    if start.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True)
        pytest.fail(f"SLURM test cluster failed to start:\n{start.stdout}\n{start.stderr}")
    try:
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True,
                       timeout=120)


@pytest.fixture(scope="session")
def small_mock(tmp_path_factory, shared_data):
    """A small mock survey (400 LAMOST, 400 DESI spectra) generated once per session."""
    from specbridge.config import validate_config
    from specbridge.mock.survey import generate

    out = tmp_path_factory.mktemp("mock")
    cfg = validate_config({"reference_data": str(shared_data),
                           "resources_dir": str(out / "resources"),
                           "data": {"mock": {"n_lamost": 400, "n_desi": 400,
                                             "desi_per_file": 200}}})
    res = generate(cfg, out)
    res["outdir"] = out
    res["config"] = cfg
    return res
