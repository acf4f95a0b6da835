"""envs/specbridge.yaml (clusters) names the same dependencies, at the same versions, as
pyproject.toml."""

from __future__ import annotations

import re

import tomllib
import yaml


def _name(req: str) -> str:
    return re.split(r"[=<>!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_matches_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    deps = {_name(d): d.replace(" ", "") for d in project["dependencies"]}
    env = yaml.safe_load((repo / "envs" / "specbridge.yaml").read_text())
    pip = next(x["pip"] for x in env["dependencies"] if isinstance(x, dict) and "pip" in x)
    env_deps = {_name(d): d.replace(" ", "") for d in pip if not d.startswith("-")}
    assert env_deps == deps
    for required in ("mpi4py", "torch", "h5py", "numpy", "astropy", "numba", "snakemake",
                     "snakemake-executor-plugin-slurm", "fitsio", "peft"):
        assert required in deps
