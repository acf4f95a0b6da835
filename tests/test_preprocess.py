"""`specbridge preprocess`: real MPI ranks, HDF5 shards, nothing lost, restartable."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest

from specbridge import flags
from specbridge.io.labels import read_apogee_allstar
from specbridge.io.manifest import build_manifest, write_manifest
from specbridge.io.shards import read_index, read_shard

FIELDS = ("flux", "ivar", "mask", "specid", "manifest_row", "flags", "labels")


@pytest.fixture(scope="module")
def manifests(small_mock, shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("manifests")
    labels = read_apogee_allstar(small_mock["labels"])
    desi = build_manifest("desi", small_mock["desi"], labels=labels,
                          redshift_files=small_mock["redrock"])
    # real DESI files too: empty fibres, sky fibres, galaxies, a file without FIBERMAP
    real = sorted(str(p) for p in (shared_data / "desi").glob("*coadd*.fits"))
    desi_real = build_manifest("desi", real)
    write_manifest(d / "desi.fits", np.concatenate([desi, desi_real]))
    lam = build_manifest("lamost", small_mock["lamost"][:150], labels=labels)
    write_manifest(d / "lamost.fits", lam)
    return d


def _run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _collect(index):
    parts = [read_shard(s["path"], FIELDS) for s in read_index(index)]
    return {k: np.concatenate([p[k] for p in parts]) for k in FIELDS}


@pytest.mark.mpi
def test_one_and_two_ranks_identical_and_nothing_lost(manifests, tmp_path, tool_env, mpiexec):
    outs = {}
    for nranks in (1, 2):
        idx = tmp_path / f"r{nranks}" / "index.h5"
        _run([mpiexec, "-n", str(nranks), "specbridge", "preprocess", "--manifest",
              str(manifests / "desi.fits"), "--output", str(idx), "--spectra-per-shard", "90"],
             tool_env)
        outs[nranks] = _collect(idx)
    a, b = outs[1], outs[2]
    for k in FIELDS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # every manifest row is in the shards, in order, with its flags kept
    import fitsio

    man = fitsio.read(str(manifests / "desi.fits"), ext="MANIFEST")
    np.testing.assert_array_equal(a["manifest_row"], np.arange(len(man)))
    np.testing.assert_array_equal(a["specid"], man["SPECID"])
    fatal = flags.is_fatal(man["FLAGS"])
    assert fatal.any() and (~fatal).sum() >= 400
    assert np.all(a["ivar"][fatal] == 0)
    np.testing.assert_array_equal(a["flags"][fatal], man["FLAGS"][fatal])
    ok = ~flags.is_fatal(a["flags"])
    mock = ok & (np.arange(len(man)) < 400)  # the mock stars (the real files follow)
    assert mock.sum() == 400
    assert np.all((a["ivar"][mock] > 0).mean(axis=1) > 0.95)
    assert 0.85 < np.median(a["flux"][mock][a["ivar"][mock] > 0]) < 1.05  # normalised
    with h5py.File(tmp_path / "r2" / "index.h5") as h:
        assert h.attrs["n_spectra"] == len(man) and h.attrs["complete"]


def test_rerun_skips_complete_shards_and_redoes_broken_ones(manifests, tmp_path, tool_env):
    idx = tmp_path / "index.h5"
    cmd = ["specbridge", "preprocess", "--manifest", str(manifests / "lamost.fits"), "--output",
           str(idx), "--spectra-per-shard", "50"]
    _run(cmd, tool_env)
    first = _collect(idx)
    shards = sorted((tmp_path / "shards").glob("shard-*.h5"))
    assert len(shards) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    # a shard left half-written by a killed job (truncated file) is redone; others are kept
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    r = _run(cmd, tool_env)
    assert "2 skipped as complete" in r.stderr
    assert shards[0].stat().st_mtime_ns == mtimes[shards[0]]
    assert shards[1].stat().st_mtime_ns != mtimes[shards[1]]
    again = _collect(idx)
    for k in FIELDS:
        np.testing.assert_array_equal(first[k], again[k])


def test_lamost_labels_travel_with_the_spectra(manifests, tmp_path, tool_env):
    idx = tmp_path / "index.h5"
    _run(["specbridge", "preprocess", "--manifest", str(manifests / "lamost.fits"), "--output",
          str(idx)], tool_env)
    out = _collect(idx)
    import fitsio

    man = fitsio.read(str(manifests / "lamost.fits"), ext="MANIFEST")
    np.testing.assert_array_equal(out["labels"][:, 0], man["TEFF"].astype(np.float32))
    assert np.isfinite(out["labels"][:, 0]).mean() > 0.8


def test_missing_manifest_is_one_clear_error(tmp_path, tool_env, mpiexec):
    r = subprocess.run([mpiexec, "-n", "2", "specbridge", "preprocess", "--manifest",
                        str(tmp_path / "nope.fits"), "--output", str(tmp_path / "i.h5")],
                       capture_output=True, text=True, env=tool_env, timeout=120)
    assert r.returncode != 0
    assert "cannot read manifest" in r.stderr and "Traceback" not in r.stderr
