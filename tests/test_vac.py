"""Sharded inference and the VAC on a DESI set with hostile files: fitsverify-clean FITS,
one row per input spectrum, FITS == HDF5, and a rerun after lost shards gives the same VAC."""

from __future__ import annotations

import shutil
import subprocess

import fitsio
import h5py
import numpy as np
import pytest
from conftest import run_specbridge

from specbridge import flags
from specbridge.io.labels import read_apogee_allstar
from specbridge.io.manifest import build_manifest, write_manifest
from specbridge.vac.catalogue import read_fits_tables, read_hdf5_tables
from specbridge.vac.healpix import ang2pix_nest


def _hostile_desi(small_mock, d):
    """The mock DESI files, a truncated copy of one, and a copy of another whose B_FLUX is
    all NaN (its TARGETIDs repeat the original's)."""
    files = list(small_mock["desi"])
    raw = open(files[0], "rb").read()
    (d / "truncated.fits").write_bytes(raw[: len(raw) // 3])
    with fitsio.FITS(files[1]) as src, fitsio.FITS(str(d / "nan_b.fits"), "rw",
                                                   clobber=True) as dst:
        for h in src[1:]:
            data = h.read()
            if h.get_extname() == "B_FLUX":
                data = np.full_like(data, np.nan)
            dst.write(data, extname=h.get_extname(), header=h.read_header())
    return files + [str(d / "truncated.fits"), str(d / "nan_b.fits")]


@pytest.fixture(scope="module")
def vac_run(transfer_run, small_mock, tmp_path_factory, tool_env, mpiexec):
    d = tmp_path_factory.mktemp("vac")
    files = _hostile_desi(small_mock, d)
    rows = build_manifest("desi", files, labels=read_apogee_allstar(small_mock["labels"]),
                          redshift_files=small_mock["redrock"])
    write_manifest(d / "desi.fits", rows)
    cfg = transfer_run["config"]
    index = d / "pre" / "index.h5"
    run_specbridge(["preprocess", "--config", cfg, "--manifest", d / "desi.fits", "--output",
                    index, "--spectra-per-shard", "120"], tool_env)
    cands = list(transfer_run["cands"].values())
    ev = d / "eval"
    run_specbridge(["evaluate", "--config", cfg, "--checkpoints", *cands, "--spectra", index,
                    "--metrics", ev / "m.ecsv", "--metrics-md", ev / "m.md", "--selection",
                    ev / "sel.ecsv", "--summary", ev / "s.ecsv", "--predictions",
                    ev / "p.h5"], tool_env)
    infer = ["specbridge", "infer", "--config", str(cfg), "--checkpoints", *map(str, cands),
             "--selection", str(ev / "sel.ecsv"), "--spectra", str(index), "--output",
             str(d / "inf" / "index.h5")]
    r = subprocess.run([mpiexec, "-n", "2", *infer], capture_output=True, text=True,
                       env=tool_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def vac(tag):
        run_specbridge(["vac", "--config", cfg, "--predictions", d / "inf" / "index.h5",
                        "--manifest", d / "desi.fits", "--fits", d / tag / "vac.fits",
                        "--hdf5", d / tag / "vac.h5", "--healpix-dir", d / tag / "hpx"],
                       tool_env)
        return d / tag

    return {"dir": d, "manifest": rows, "files": files, "infer": infer, "vac": vac,
            "first": vac("first")}


def test_vac_passes_fitsverify(vac_run):
    paths = [vac_run["first"] / "vac.fits", *sorted((vac_run["first"] / "hpx").glob("*.fits"))]
    assert len(paths) > 2
    for p in paths:
        r = subprocess.run(["fitsverify", str(p)], capture_output=True, text=True)
        assert "Verification found 0 warning(s) and 0 error(s)" in r.stdout, r.stdout[-2000:]
    with fitsio.FITS(str(paths[0])) as f:
        assert [h.get_extname() for h in f] == ["PRIMARY", "PARAMS", "CANDIDATES", "FIBERMAP"]
        h = f["PARAMS"].read_header()
        assert h["TUNIT2"].strip() == "K" and h["TTYPE2"].strip() == "TEFF"
        p = f[0].read_header()
        assert p["DEPNAM01"] == "torch" and p["CONFHASH"] and len(p["CKSH00"]) == 40
        assert p["ROUTER"] == "mlp_zeroshot" and p["SEL2P"] in {c for c in [
            p[f"CAND{k:02d}"] for k in range(4)]}


def test_one_row_per_input_spectrum_with_flags(vac_run):
    m = vac_run["manifest"]
    t = read_fits_tables(vac_run["first"] / "vac.fits")
    n_in = sum(fitsio.read_header(f, "FIBERMAP")["NAXIS2"] for f in vac_run["files"][:-2])
    n_in += 1 + fitsio.read_header(vac_run["files"][1], "FIBERMAP")["NAXIS2"]  # trunc + copy
    assert len(t["PARAMS"]) == len(m) == n_in
    for hdu in t.values():
        np.testing.assert_array_equal(hdu["TARGETID"], m["SPECID"])
    fatal_in = flags.is_fatal(m["FLAGS"])
    assert fatal_in.sum() >= 1 + 200  # the truncated file's row and the NaN copy
    p = t["PARAMS"]
    assert (p["FLAGS"][fatal_in] != 0).all()
    assert np.isnan(p["TEFF"][fatal_in]).all() and (p["REGIME"][fatal_in] == -1).all()
    documented = sum(f.value for f in flags.FLAG_BITS)
    assert (p["FLAGS"] & ~documented == 0).all()
    ok = ~flags.is_fatal(p["FLAGS"])
    assert ok.sum() >= 350 and np.isfinite(p["TEFF"][ok]).all()
    assert set(p["TEFF_SOURCE"][ok].astype(str)) <= {f"mlp_{s}" for s in
                                                     ("zeroshot", "adapter", "lora", "full")}
    # the HEALPix files partition the rows, each at its own pixel
    hp = [read_fits_tables(f) for f in (vac_run["first"] / "hpx").glob("*.fits")]
    assert sum(len(h["PARAMS"]) for h in hp) == len(p)
    for h in hp:
        f = h["FIBERMAP"]
        assert len(set(f["HEALPIX"])) == 1
        np.testing.assert_array_equal(ang2pix_nest(64, f["TARGET_RA"], f["TARGET_DEC"]),
                                      f["HEALPIX"])


def test_fits_and_hdf5_agree_value_for_value(vac_run):
    fits = read_fits_tables(vac_run["first"] / "vac.fits")
    h5 = read_hdf5_tables(vac_run["first"] / "vac.h5")
    for hdu, tab in fits.items():
        assert set(tab.dtype.names) == set(h5[hdu])
        for c in tab.dtype.names:
            a, b = tab[c], h5[hdu][c]
            if a.dtype.kind in "SU":
                assert [x.strip() for x in a.astype(str)] == [x.strip() for x in
                                                              b.astype(str)], c
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{hdu}.{c}")
    with h5py.File(vac_run["first"] / "vac.h5") as h:
        assert h["PARAMS/TEFF"].attrs["unit"] == "K"


def test_rerun_after_lost_shards_gives_the_same_vac(vac_run, tool_env):
    shards = sorted((vac_run["dir"] / "inf" / "shards").glob("pred-*.h5"))
    assert len(shards) >= 3
    kept = {s: s.stat().st_mtime_ns for s in shards[2:]}
    shards[0].unlink()                                  # lost
    shards[1].write_bytes(shards[1].read_bytes()[:500])  # truncated by a kill mid-write
    r = subprocess.run(vac_run["infer"], capture_output=True, text=True, env=tool_env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({len(shards) - 2} skipped as complete)" in r.stderr
    assert all(s.stat().st_mtime_ns == t for s, t in kept.items())
    again = vac_run["vac"]("again")
    a = read_fits_tables(vac_run["first"] / "vac.fits")
    b = read_fits_tables(again / "vac.fits")
    for hdu in a:
        for c in a[hdu].dtype.names:
            np.testing.assert_array_equal(a[hdu][c], b[hdu][c], err_msg=f"{hdu}.{c}")
    shutil.rmtree(again)
