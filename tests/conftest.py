"""Shared fixtures: repository paths, the MPI launcher, and the local SLURM test cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    """A small mock survey (400 LAMOST, 400 DESI spectra, 40 stars in both) generated once per
    session."""
    from specbridge.config import validate_config
    from specbridge.mock.survey import generate

    out = tmp_path_factory.mktemp("mock")
    cfg = validate_config({"reference_data": str(shared_data),
                           "resources_dir": str(out / "resources"),
                           "data": {"mock": {"n_lamost": 400, "n_desi": 400,
                                             "n_lamost_unlabelled": 200,
                                             "n_overlap": 40, "desi_per_file": 200}}})
    res = generate(cfg, out)
    res["outdir"] = out
    res["config"] = cfg
    return res


# ---- transfer: a small pretrained MLP and its four DESI candidates ----------------------------

LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["linear"],
        "train_output_layer": True}


def run_specbridge(args, env, timeout=600):
    r = subprocess.run(["specbridge", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="session")
def transfer_run(small_mock, tmp_path_factory, tool_env):
    """Preprocessed mock LAMOST + DESI, a small pretrained MLP, and all four candidates."""
    from specbridge.io.labels import read_apogee_allstar
    from specbridge.io.manifest import build_manifest, write_manifest
    from specbridge.models.checkpoint import load_checkpoint
    from specbridge.models.transfer import STRATEGIES

    d = tmp_path_factory.mktemp("transfer")
    labels = read_apogee_allstar(small_mock["labels"])
    cfg = {"models": {"mlp": {"hidden": [64, 32], "dropout": 0.0}},
           "training": {"batch_size": 32, "epochs": 8, "lr": 2e-3, "patience": 10,
                        "val_fraction": 0.15},
           "finetune": {"models": ["mlp"], "n_train": 1000, "lr": 1e-3, "epochs": 10,
                        "val_fraction": 0.25, "test_fraction": 0.25,
                        "adapter": {"hidden": 16}, "lora": {**LORA, "rank": 4}},
           "inference": {"router": "mlp_zeroshot"}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    index = {}
    for survey in ("lamost", "desi"):
        kw = {"redshift_files": small_mock["redrock"]} if survey == "desi" else {}
        write_manifest(d / f"{survey}.fits",
                       build_manifest(survey, small_mock[survey], labels=labels, **kw))
        index[survey] = d / "pre" / survey / "index.h5"
        run_specbridge(["preprocess", "--config", d / "config.yaml", "--manifest",
                        d / f"{survey}.fits", "--output", index[survey],
                        "--spectra-per-shard", "150"], tool_env)
    run_specbridge(["pretrain", "--config", d / "config.yaml", "--model", "mlp", "--spectra",
          index["lamost"], "--output", d / "pretrained.pt"], tool_env)
    cands = {}
    for s in STRATEGIES:
        cands[s] = d / f"mlp_{s}.pt"
        run_specbridge(["finetune", "--config", d / "config.yaml", "--model", "mlp",
                        "--strategy", s, "--pretrained", d / "pretrained.pt",
                        "--spectra", index["desi"],
              "--output", cands[s]], tool_env)
    return {"dir": d, "config": d / "config.yaml", "index": index, "cands": cands,
            "pretrained": {"model": load_checkpoint(d / "pretrained.pt").state_dict}}
