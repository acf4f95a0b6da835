"""Sharded inference and the VAC on a DESI set with hostile files: fitsverify-clean FITS,
one row per input spectrum, FITS == HDF5, and a rerun after lost shards gives the same VAC."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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


def _copy_desi(src_path, dst_path, survey=None, ivar_scale=1.0, nan_arm=None):
    """A copy of a DESI file: primary header SURVEY replaced (dropped when ``survey`` is
    None), every IVAR scaled by ``ivar_scale``, ``nan_arm``'s FLUX all NaN."""
    with fitsio.FITS(str(src_path)) as src, fitsio.FITS(str(dst_path), "rw",
                                                        clobber=True) as dst:
        hdr = src[0].read_header()
        dst.write(None)
        if survey is not None:
            dst[0].write_keys([{"name": "SURVEY", "value": survey},
                               {"name": "PROGRAM", "value": hdr["PROGRAM"]}])
        for h in src[1:]:
            data = h.read()
            if h.get_extname().endswith("_IVAR"):
                data = data * np.float32(ivar_scale)
            if h.get_extname() == f"{nan_arm}_FLUX":
                data = np.full_like(data, np.nan)
            dst.write(data, extname=h.get_extname(), header=h.read_header())
    return str(dst_path)


def _hostile_desi(small_mock, d):
    """The mock DESI files (main/bright), a truncated copy of one, a renamed copy of another
    whose B_FLUX is all NaN (no SURVEY/PROGRAM: unknown), and a copy of the first observed
    again in SURVEY sv3 at twice the S/N: its TARGETIDs repeat across programs."""
    files = list(small_mock["desi"])
    raw = open(files[0], "rb").read()
    (d / "truncated.fits").write_bytes(raw[: len(raw) // 3])
    nan_b = _copy_desi(files[1], d / "nan_b.fits", nan_arm="B")
    pix = Path(files[0]).stem.rsplit("-", 1)[1]
    sv3 = _copy_desi(files[0], d / f"coadd-sv3-bright-{pix}.fits", survey="sv3",
                     ivar_scale=4.0)
    return files + [str(d / "truncated.fits"), nan_b, sv3]


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
                        "--hdf5", d / tag / "vac.h5", "--tree", d / tag / "v1"],
                       tool_env)
        return d / tag

    return {"dir": d, "manifest": rows, "files": files, "infer": infer, "vac": vac,
            "first": vac("first"), "config": cfg}


def _layout_files(top):
    """The per-HEALPix files and the per-SURVEY-PROGRAM catalogues of a VAC's tree."""
    tree = top / "v1"
    return sorted((tree / "healpix").rglob("*.fits")), sorted(tree.glob("*.fits"))


def test_vac_passes_fitsverify(vac_run):
    pixels, merged = _layout_files(vac_run["first"])
    paths = [vac_run["first"] / "vac.fits", *merged, *pixels]
    assert len(pixels) > 2 and len(merged) == 3  # main/bright, sv3/bright, unknown/unknown
    for p in paths:
        r = subprocess.run(["fitsverify", str(p)], capture_output=True, text=True)
        assert "Verification found 0 warning(s) and 0 error(s)" in r.stdout, r.stdout[-2000:]
    with fitsio.FITS(str(paths[0])) as f:
        assert [h.get_extname() for h in f] == ["PRIMARY", "PARAMS", "CANDIDATES", "FIBERMAP"]
        h = f["PARAMS"].read_header()
        assert h["TUNIT5"].strip() == "K" and h["TTYPE5"].strip() == "TEFF"
        p = f[0].read_header()
        assert p["DEPNAM01"] == "torch" and p["CONFHASH"] and len(p["CKSH00"]) == 40
        assert p["VACVER"] == "v1" and p["NSPEC"] == f["PARAMS"].get_nrows()
        assert p["ROUTER"] == "mlp_zeroshot" and p["SEL2P"] in {c for c in [
            p[f"CAND{k:02d}"] for k in range(4)]}
        assert all(h[f"CAND{k:02d}"] == p[f"CAND{k:02d}"] for k in range(4))


def test_one_row_per_input_spectrum_with_flags(vac_run):
    m = vac_run["manifest"]
    t = read_fits_tables(vac_run["first"] / "vac.fits")
    n_in = sum(1 if f.endswith("truncated.fits") else
               fitsio.read_header(f, "FIBERMAP")["NAXIS2"] for f in vac_run["files"])
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
    assert ok.sum() >= 550 and np.isfinite(p["TEFF"][ok]).all()
    # the serving candidate: an index into the header's CANDnn table
    assert set(p["TEFF_SOURCE"][ok]) <= set(range(4)) and (p["TEFF_SOURCE"][~ok] == -1).all()
    hdr = fitsio.read_header(vac_run["first"] / "vac.fits", "PARAMS")
    assert {hdr[f"CAND{k:02d}"] for k in set(p["TEFF_SOURCE"][ok])} <= {
        f"mlp_{s}" for s in ("zeroshot", "adapter", "lora", "full")}
    assert "FLAG_NAMES" not in p.dtype.names
    with h5py.File(vac_run["first"] / "vac.h5") as h:
        assert h["PARAMS/FLAG_REASON"].dtype == np.dtype("S64")
        assert h["PARAMS/TEFF_SOURCE"].dtype == np.dtype("i1")
    reasons = p["FLAG_REASON"].astype(str)
    assert (reasons[~fatal_in] == "").all() and (reasons[fatal_in] != "").any()


def test_survey_and_program_from_headers_and_names(vac_run, tmp_path):
    from specbridge.io.desi import read_survey_program, survey_program_from_name
    p = read_fits_tables(vac_run["first"] / "vac.fits")["PARAMS"]
    files = read_fits_tables(vac_run["first"] / "vac.fits")["FIBERMAP"]["FILE"].astype(str)
    sp = {(f, s, g) for f, s, g in zip(files, p["SURVEY"].astype(str),
                                       p["PROGRAM"].astype(str), strict=True)}
    for f, s, g in sp:
        if f.startswith("coadd-sv3"):
            assert (s, g) == ("sv3", "bright")
        elif f.startswith("coadd-main-bright"):
            assert (s, g) == ("main", "bright")
        else:  # the renamed copy without header keywords, the truncated file
            assert (s, g) == ("", ""), f
    assert survey_program_from_name("spectra-sv3-dark-26065.fits.gz") == ("sv3", "dark")
    assert survey_program_from_name("coadd-0-80605-20201215.fits") == ("", "")
    # the header wins over the name (DESI records both; a renamed file keeps its header)
    moved = tmp_path / "coadd-special-other-7.fits"
    shutil.copy(vac_run["files"][-1], moved)
    assert read_survey_program(moved) == ("sv3", "bright")


def test_one_primary_per_star_across_programs(vac_run):
    t = read_fits_tables(vac_run["first"] / "vac.fits")
    p = t["PARAMS"]
    tid = p["TARGETID"]
    stars = np.unique(tid[tid >= 0])
    n_primary = np.array([p["PRIMARY"][tid == s].sum() for s in stars])
    assert (n_primary == 1).all() and not p["PRIMARY"][tid < 0].any()
    # the sv3 copy repeats the main/bright TARGETIDs at twice the S/N: both observations
    # have parameters (no DUPLICATE_ID), and the sv3 one is PRIMARY where it is usable
    sv3 = p["SURVEY"].astype(str) == "sv3"
    main = p["SURVEY"].astype(str) == "main"
    repeated = np.intersect1d(tid[sv3], tid[main])
    assert repeated.size == 200
    assert not (p["FLAGS"][sv3 | main] & flags.flag("DUPLICATE_ID")).any()
    both_ok = [s for s in repeated if not flags.is_fatal(p["FLAGS"][(tid == s) & sv3][0])
               and not flags.is_fatal(p["FLAGS"][(tid == s) & main][0])]
    assert len(both_ok) >= 150
    for s in both_ok:
        a, b = p[(tid == s) & sv3][0], p[(tid == s) & main][0]
        assert np.isfinite(a["TEFF"]) and np.isfinite(b["TEFF"])
        assert a["SNR"] > b["SNR"] and a["PRIMARY"] and not b["PRIMARY"]
    # the NaN copy (fatal) of the second file never takes PRIMARY from its usable original
    unknown = p["SURVEY"].astype(str) == ""
    nan_ids = tid[unknown & (tid >= 0)]
    assert nan_ids.size >= 200 and not p["PRIMARY"][unknown & (tid >= 0)].any()


def test_desi_layout_partitions_the_rows(vac_run):
    full = read_fits_tables(vac_run["first"] / "vac.fits")
    pixels, merged = _layout_files(vac_run["first"])
    tree = vac_run["first"] / "v1"
    seen = []
    for f in pixels:
        rel = f.relative_to(tree / "healpix").parts
        h = read_fits_tables(f)
        fib, p = h["FIBERMAP"], h["PARAMS"]
        survey, program = rel[0], rel[1]
        assert set(p["SURVEY"].astype(str)) == {"" if survey == "unknown" else survey}
        assert set(p["PROGRAM"].astype(str)) == {"" if program == "unknown" else program}
        pix = set(fib["HEALPIX"])
        assert len(pix) == 1
        pixel = pix.pop()
        if pixel < 0:
            assert rel[2:] == ("nopix", f"specbridge-vac-{survey}-{program}-nopix-v1.fits")
        else:
            assert rel[2:] == (str(pixel // 100), str(pixel),
                               f"specbridge-vac-{survey}-{program}-{pixel}-v1.fits")
            np.testing.assert_array_equal(ang2pix_nest(64, fib["TARGET_RA"],
                                                       fib["TARGET_DEC"]), fib["HEALPIX"])
        assert fitsio.read_header(f, 0)["HPXPIXEL"] == pixel
        seen += list(zip(fib["FILE"].astype(str), fib["ROW"], strict=True))
    # every input spectrum in exactly one HEALPix file, and in its SURVEY-PROGRAM catalogue
    want = list(zip(full["FIBERMAP"]["FILE"].astype(str), full["FIBERMAP"]["ROW"],
                    strict=True))
    assert sorted(seen) == sorted(want) and len(set(seen)) == len(seen)
    assert [f.name for f in merged] == [f"specbridge-vac-{sp}-v1.fits" for sp in
                                        ("main-bright", "sv3-bright", "unknown-unknown")]
    in_merged = [read_fits_tables(f) for f in merged]
    assert sum(len(m["PARAMS"]) for m in in_merged) == len(full["PARAMS"])
    for m in in_merged:
        assert len(set(m["PARAMS"]["SURVEY"])) == 1
        assert (np.diff(m["FIBERMAP"]["HEALPIX"]) >= 0).all()  # in HEALPix order
    # value for value: the HEALPix files, in order, are the SURVEY-PROGRAM catalogues, and
    # both are the catalogue of every observation reordered
    order = np.lexsort((full["FIBERMAP"]["ROW"], full["FIBERMAP"]["FILE"]))
    by_pixel = sorted(pixels, key=lambda f: f.relative_to(tree / "healpix").parts[:2] + (
        fitsio.read_header(f, 0)["HPXPIXEL"],))
    tables = [[read_fits_tables(f) for f in by_pixel], in_merged]
    for parts in tables:
        for hdu in full:
            cat = np.concatenate([t[hdu] for t in parts])
            fib = np.concatenate([t["FIBERMAP"] for t in parts])
            mine = np.lexsort((fib["ROW"], fib["FILE"]))
            for c in full[hdu].dtype.names:
                np.testing.assert_array_equal(cat[c][mine], full[hdu][c][order], err_msg=c)
    for a, b in zip(np.concatenate([t["PARAMS"] for t in tables[0]]),
                    np.concatenate([t["PARAMS"] for t in tables[1]]), strict=True):
        assert a["TARGETID"] == b["TARGETID"] and a["SURVEY"] == b["SURVEY"]


def test_streaming_equals_all_at_once(vac_run, tmp_path):
    """The catalogue built a few rows at a time (chunks of 7 manifest rows, layout blocks of
    50) equals, file for file and value for value, the one built with every row at once."""
    from specbridge.vac.stream import build

    d = vac_run["dir"]
    out = {}
    for tag, chunk, block in (("small", 7, 50), ("whole", 10**9, 10**9)):
        top = tmp_path / tag
        build(d / "inf" / "index.h5", d / "desi.fits", top / "vac.fits", top / "vac.h5",
              top / "v1", "specbridge-vac", "v1", "hash", chunk_rows=chunk, block_rows=block)
        out[tag] = top
    files = {tag: sorted(p.relative_to(top) for p in top.rglob("*.fits"))
             for tag, top in out.items()}
    assert files["small"] == files["whole"] and len(files["small"]) > 5
    for rel in files["small"]:
        a, b = (read_fits_tables(out[t] / rel) for t in ("small", "whole"))
        for hdu in a:
            assert a[hdu].dtype == b[hdu].dtype
            for c in a[hdu].dtype.names:
                np.testing.assert_array_equal(a[hdu][c], b[hdu][c], err_msg=f"{rel} {c}")
    a, b = (read_hdf5_tables(out[t] / "vac.h5") for t in ("small", "whole"))
    for g in a:
        for c in a[g]:
            np.testing.assert_array_equal(a[g][c], b[g][c], err_msg=f"{g}.{c}")
    assert not list(tmp_path.rglob(".spill*")) and not list(tmp_path.rglob("*.part.fits"))


def test_vac_under_mpi_equals_one_rank(vac_run, tmp_path, mpiexec, tool_env):
    """`mpiexec -n 2 specbridge vac`, with blocks small enough that both ranks write HEALPix
    files, writes the same files, value for value, as one rank."""
    import yaml

    d = vac_run["dir"]
    cfg = tmp_path / "small_blocks.yaml"
    base = yaml.safe_load(Path(vac_run["config"]).read_text())
    cfg.write_text(yaml.safe_dump({**base, "vac": {**base.get("vac", {}), "block_rows": 50,
                                                   "chunk_rows": 7}}))
    top = tmp_path / "mpi"
    r = subprocess.run([mpiexec, "-n", "2", "specbridge", "vac", "--config", str(cfg),
                        "--predictions", str(d / "inf" / "index.h5"), "--manifest",
                        str(d / "desi.fits"), "--fits", str(top / "vac.fits"), "--hdf5",
                        str(top / "vac.h5"), "--tree", str(top / "v1")],
                       capture_output=True, text=True, env=tool_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(2 rank(s))" in r.stderr
    first = vac_run["first"]
    files = {k: sorted(p.relative_to(t) for p in t.rglob("*.fits"))
             for k, t in (("one", first), ("mpi", top))}
    assert files["one"] == files["mpi"] and len(files["one"]) > 5
    for rel in files["one"]:
        a, b = read_fits_tables(first / rel), read_fits_tables(top / rel)
        for hdu in a:
            for c in a[hdu].dtype.names:
                np.testing.assert_array_equal(a[hdu][c], b[hdu][c], err_msg=f"{rel} {c}")
    assert not list(top.rglob(".spill*"))


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


# ---- the pieces, without the pipeline --------------------------------------------------------

def test_primary_rule():
    from specbridge.vac.catalogue import primary_mask

    tid = np.array([7, 7, 7, 9, 9, 5, -3, -3, 11, 11, 11])
    usable = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1], bool)
    snr = np.array([5, 9, 50, np.nan, 2, np.nan, 8, 9, 4, 4, np.nan], np.float32)
    p = primary_mask(tid, usable, snr)
    # 7: the best usable S/N (not the fatal row of higher S/N); 9: none usable, a finite
    # S/N beats NaN; 5: alone; negative IDs: never; 11: a tie goes to the first row
    assert p.tolist() == [0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    for _ in range(5):  # the choice does not depend on the order of the rows
        perm = np.random.default_rng(_).permutation(tid.size)
        q = primary_mask(tid[perm], usable[perm], snr[perm])
        s = np.nan_to_num(snr, nan=-1)
        assert sorted(zip(tid[perm][q], s[perm][q], strict=True)) == sorted(
            zip(tid[p], s[p], strict=True))


def test_fits_row_bytes_are_what_cfitsio_writes(tmp_path):
    from specbridge.vac.catalogue import empty_table, hdu_columns
    from specbridge.vac.stream import fits_row_bytes

    cols = hdu_columns(["teff", "logg", "feh", "alpha_fe"], ["mlp_a", "mlp_b"])
    rng = np.random.default_rng(3)
    for name, c in cols.items():
        t = empty_table(c, 57)
        for f in t.dtype.names:
            kind = t.dtype[f].kind
            t[f] = (rng.normal(size=57) if kind == "f" else rng.integers(-1, 3, 57)
                    if kind == "i" else rng.random(57) < 0.5 if kind == "b" else
                    [b"main", b"", b"no pixel with ivar > 0"][rng.integers(3)])
        path = tmp_path / f"{name}.fits"
        with fitsio.FITS(str(path), "rw", clobber=True) as f:
            f.write(t, extname=name)
            start = f[1].get_offsets()["data_start"]
        raw = path.read_bytes()[start:start + t.dtype.itemsize * t.size]
        assert fits_row_bytes(t) == raw, name


def test_blocks_hold_whole_files():
    from specbridge.vac.stream import plan_blocks

    key = np.repeat([1, 2, 3, 4, 5], [3, 10, 2, 2, 1])
    b = plan_blocks(key, 4)
    assert b.tolist() == [0, 3, 13, 17, 18]  # the 10-row file alone, the others packed <= 4
    starts = set(np.flatnonzero(np.diff(key)) + 1) | {0, key.size}
    assert set(b.tolist()) <= starts
    assert plan_blocks(key, 100).tolist() == [0, 18]
    assert plan_blocks(np.zeros(0, np.int64), 5).tolist() == [0]


def test_layout_paths():
    from specbridge.vac import layout

    p = layout.healpix_file("/v1", "sb", "v1", "main", "bright", 10016)
    assert str(p) == "/v1/healpix/main/bright/100/10016/sb-main-bright-10016-v1.fits"
    p = layout.healpix_file("/v1", "sb", "v1", "", "", -1)
    assert str(p) == "/v1/healpix/unknown/unknown/nopix/sb-unknown-unknown-nopix-v1.fits"
    assert str(layout.merged_file("/v1", "sb", "v2", "sv3", "dark")) == "/v1/sb-sv3-dark-v2.fits"
    assert layout.hpixgroup(99) == 0 and layout.hpixgroup(49151) == 491
