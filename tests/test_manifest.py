"""The manifest: labels attach to the right spectra; a corrupt-file corpus derived from the real
files gets the right flags and reasons while every file stays listed; FITS round trip."""

from __future__ import annotations

import csv
import gzip
import shutil
import subprocess
from pathlib import Path

import fitsio
import numpy as np
import pytest

from specbridge import flags
from specbridge.io.labels import read_apogee_allstar, read_label_table
from specbridge.io.manifest import build_manifest, read_manifest, write_manifest

MDWARF_COLUMNS = {"teff": "teffin", "logg": "loggin", "feh": "fehin", "file": "file_name",
                  "ra": "RA", "dec": "DEC", "id": "lamost"}
LASP_COLUMNS = {"teff": "pred_Teff", "logg": "pred_logg", "feh": "pred_FeH",
                "teff_err": "pred_Teff_err", "logg_err": "pred_logg_err",
                "feh_err": "pred_FeH_err", "file": "ID"}


def names(v) -> set[str]:
    return set(flags.names(int(v)))


def test_mdwarf_labels_attach_by_file_and_by_position(shared_data):
    folder = shared_data / "lamost" / "mdwarfs_labelled"
    files = sorted(str(p) for p in folder.glob("*.fits"))
    with open(folder / "labels.csv") as fh:
        truth = {r["file_name"]: r for r in csv.DictReader(fh)}
    by_file = build_manifest("lamost", files,
                             labels=read_label_table(folder / "labels.csv", MDWARF_COLUMNS))
    assert by_file.size == 54
    for r in by_file:
        t = truth[Path(r["FILE"]).name]
        assert r["MATCH_METHOD"] == "file"
        assert r["TEFF"] == pytest.approx(float(t["teffin"]))
        assert r["LOGG"] == pytest.approx(float(t["loggin"]))
        assert r["FEH"] == pytest.approx(float(t["fehin"]))
        assert r["LABEL_ID"] == t["lamost"]
        assert "NO_LABEL" not in names(r["FLAGS"])
    # the same table matched by sky position only (1 arcsec) gives the same labels
    pos_cols = {k: v for k, v in MDWARF_COLUMNS.items() if k != "file"}
    by_pos = build_manifest("lamost", files, labels=read_label_table(folder / "labels.csv",
                                                                      pos_cols))
    matched = by_pos["MATCH_METHOD"] == "position"
    assert matched.sum() >= 50
    np.testing.assert_allclose(by_pos["TEFF"][matched], by_file["TEFF"][matched])
    assert np.all(by_pos["MATCH_SEP"][matched] < 1.0)


@pytest.mark.parametrize("csv_name", ["LASP_Adam_inferred.csv", "LASP_CurveFit_inferred.csv"])
def test_pylasp_labels_attach_to_right_obsids(shared_data, csv_name):
    folder = shared_data / "lamost" / "table_format_dr10"
    files = sorted(str(p) for p in folder.glob("*.fits"))
    table = folder / csv_name
    with open(table) as fh:
        truth = {r["ID"]: r for r in csv.DictReader(fh)}
    rows = build_manifest("lamost", files, labels=read_label_table(table, LASP_COLUMNS))
    assert rows.size == 25
    labelled = 0
    for r in rows:
        name = Path(r["FILE"]).name
        assert r["SPECID"] == int(name.split(".")[0])
        if name in truth:
            labelled += 1
            assert r["TEFF"] == pytest.approx(float(truth[name]["pred_Teff"]), rel=1e-6)
            assert r["FEH_ERR"] == pytest.approx(float(truth[name]["pred_FeH_err"]), rel=1e-5)
        else:
            assert "NO_LABEL" in names(r["FLAGS"]) and np.isnan(r["TEFF"])
    assert labelled == len(truth)


def _allstar(path, ra, dec, gaia, teff, aspcapflag, starflag=None):
    n = len(ra)
    t = np.zeros(n, dtype=[("APOGEE_ID", "U18"), ("RA", "f8"), ("DEC", "f8"),
                           ("GAIAEDR3_SOURCE_ID", "i8"), ("TEFF", "f4"), ("TEFF_ERR", "f4"),
                           ("LOGG", "f4"), ("LOGG_ERR", "f4"), ("M_H", "f4"), ("FE_H", "f4"),
                           ("FE_H_ERR", "f4"), ("ALPHA_M", "f4"), ("ALPHA_M_ERR", "f4"),
                           ("ASPCAPFLAG", "i8"), ("STARFLAG", "i8")])
    t["APOGEE_ID"] = [f"2M{i:08d}" for i in range(n)]
    t["RA"], t["DEC"], t["GAIAEDR3_SOURCE_ID"], t["TEFF"] = ra, dec, gaia, teff
    t["TEFF_ERR"], t["LOGG"], t["M_H"], t["FE_H"], t["ALPHA_M"] = 50, 2.5, -0.4, -0.5, 0.2
    t["ASPCAPFLAG"] = aspcapflag
    t["STARFLAG"] = starflag if starflag is not None else 0
    fitsio.write(str(path), t, extname="ALLSTAR", clobber=True)


def test_apogee_allstar_crossmatch_flags(shared_data, tmp_path):
    folder = shared_data / "lamost" / "table_format_dr10"
    files = sorted(str(p) for p in folder.glob("*.fits"))[:4]
    base = build_manifest("lamost", files)
    ra, dec = base["RA"], base["DEC"]
    # star 0: exact; star 1: 0.5" away but BAD (ASPCAPFLAG bit 23); star 2: two candidates
    # within 1" (ambiguous); star 3: nothing within 1"
    cat_ra = [ra[0], ra[1], ra[2], ra[2], ra[3] + 10 / 3600]
    cat_dec = [dec[0], dec[1] + 0.5 / 3600, dec[2] + 0.3 / 3600, dec[2] - 0.6 / 3600, dec[3]]
    _allstar(tmp_path / "allStar.fits", cat_ra, cat_dec, [-1] * 5,
             [4000, 4100, 4200, 4300, 4400], [0, 1 << 23, 0, 0, 0])
    labels = read_apogee_allstar(tmp_path / "allStar.fits")
    # [alpha/Fe] = [alpha/M] + [M/H] - [Fe/H] = 0.2 - 0.4 + 0.5
    assert labels.values["alpha_fe"][0] == pytest.approx(0.3, abs=1e-6)
    rows = build_manifest("lamost", files, labels=labels, radius_arcsec=1.0)
    assert rows["TEFF"][0] == 4000 and names(rows["FLAGS"][0]).isdisjoint(
        {"NO_LABEL", "BAD_LABEL", "AMBIGUOUS_MATCH"})
    assert rows["TEFF"][1] == 4100 and "BAD_LABEL" in names(rows["FLAGS"][1])
    assert rows["MATCH_SEP"][1] == pytest.approx(0.5, abs=0.01)
    assert rows["TEFF"][2] == 4200 and rows["N_MATCH"][2] == 2  # the nearer of the two
    assert "AMBIGUOUS_MATCH" in names(rows["FLAGS"][2])
    assert "NO_LABEL" in names(rows["FLAGS"][3]) and np.isnan(rows["TEFF"][3])


def test_gaia_id_match_wins_over_position(shared_data, tmp_path):
    files = sorted(str(p) for p in (shared_data / "desi").glob("coadd-*.fits"))
    base = build_manifest("desi", files)
    i = int(np.flatnonzero(base["SPECID"] == 39627866878511337)[0])
    # the DESI FIBERMAP has no Gaia ID for this target: give the label table a near-position
    _allstar(tmp_path / "a.fits", [base["RA"][i]], [base["DEC"][i] + 0.2 / 3600], [123],
             [5000], [0])
    rows = build_manifest("desi", files, labels=read_apogee_allstar(tmp_path / "a.fits"))
    assert rows["MATCH_METHOD"][i] == "position" and rows["TEFF"][i] == 5000
    assert (rows["LABEL_ID"] != "").sum() == 1


def test_dr1_pilot_manifest(shared_data, repo, tmp_path):
    """The 2011 pilot files (third image row not wavelengths) with their DR1 catalogue labels,
    through the config's real_validation entry: every labelled star usable, flag carried."""
    import yaml

    entry = next(s for s in yaml.safe_load((repo / "config.yaml").read_text())
                 ["real_validation"] if s["name"] == "dr1_pilot")
    folder = shared_data / "lamost" / "dr1_pilot"
    files = sorted(str(p) for p in folder.glob("*.fits"))
    table = entry["labels"].replace("{reference_data}", str(shared_data))
    with open(table) as fh:
        truth = {r["filename"]: r for r in csv.DictReader(fh)}
    rows = build_manifest("lamost", files, labels=read_label_table(table, entry["columns"]))
    assert rows.size == 176 and len(truth) == 131
    assert not flags.is_fatal(rows["FLAGS"]).any(), set(rows["FLAG_REASON"])
    wfh = flags.flag("WAVE_FROM_HEADER")
    assert np.all(rows["FLAGS"] & wfh)
    assert np.all(rows["NPIX"] == 3904) and np.all(rows["WAVE_MIN"].round(1) == 3700.0)
    matched = rows["LABEL_ID"] != ""
    assert matched.sum() >= len(truth)
    for r in rows[matched]:
        t = truth[Path(r["FILE"]).name]
        assert r["MATCH_METHOD"] == "file" and r["LABEL_ID"] == t["obsid"]
        assert r["TEFF"] == pytest.approx(float(t["teff"]), rel=1e-6)
        assert r["FEH_ERR"] == pytest.approx(float(t["feh_err"]), rel=1e-5)
        assert r["SNR"] > 1
    # no OBSID in the 2011 headers: synthetic IDs, never duplicates
    assert np.all(rows["SPECID"] < 0) and np.all(rows["FLAGS"] & flags.flag("NO_ID"))
    write_manifest(tmp_path / "m.fits", rows)
    assert np.all(read_manifest(tmp_path / "m.fits")["FLAGS"] & wfh)


# ---- the corrupt-file corpus, derived from the real files ------------------------------------

def _corpus(shared_data: Path, d: Path) -> dict[str, tuple[str, str, str]]:
    """Write corrupt variants; return {path: (survey, expected flag, reason fragment)}."""
    lam_img = shared_data / "lamost" / "mdwarfs_labelled" / \
        "spec-55917-B5591705_sp13-116.fits"
    lam_tab = shared_data / "lamost" / "table_format_dr10" / "3703110.fits"
    coadd = shared_data / "desi" / "coadd-sv3-dark-26065.fits"
    out: dict[str, tuple[str, str, str]] = {}

    def add(name, survey, flag, reason):
        out[str(d / name)] = (survey, flag, reason)
        return d / name

    raw = lam_img.read_bytes()
    add("zero.fits", "lamost", "UNREADABLE_FILE", "zero-length").write_bytes(b"")
    add("trunc_lamost.fits", "lamost", "UNREADABLE_FILE", "").write_bytes(raw[: len(raw) // 2])
    craw = coadd.read_bytes()
    add("trunc_desi.fits", "desi", "UNREADABLE_FILE", "").write_bytes(craw[: len(craw) // 3])
    add("notfits.fits", "lamost", "UNREADABLE_FILE", "not a readable FITS").write_text("hello")
    (d / "gz_garbage.fits.gz").write_bytes(gzip.compress(b"x" * 5000))
    out[str(d / "gz_garbage.fits.gz")] = ("lamost", "UNREADABLE_FILE", "")
    out[str(d / "does_not_exist.fits")] = ("lamost", "UNREADABLE_FILE", "cannot stat")

    hdr = fitsio.read_header(str(lam_img))
    data = fitsio.read(str(lam_img))
    fitsio.write(str(add("two_rows.fits", "lamost", "BAD_SHAPE", "primary image has 2 rows")),
                 data[:2], header=hdr, clobber=True)
    # a DESI file handed to the LAMOST reader: wrong layout
    shutil.copy(coadd, add("desi_as_lamost.fits", "lamost", "MISSING_HDU",
                           "neither a LAMOST primary image"))
    nan = data.copy()
    nan[0, :] = np.nan
    fitsio.write(str(add("nan_flux.fits", "lamost", "NO_VALID_PIXELS", "no pixel")), nan,
                 header=hdr, clobber=True)
    some_nan = data.copy()
    some_nan[0, 1000:1010] = np.inf
    fitsio.write(str(add("some_inf.fits", "lamost", "NONFINITE", "")), some_nan, header=hdr,
                 clobber=True)
    zero_ivar = data.copy()
    zero_ivar[1, :] = 0
    fitsio.write(str(add("zero_ivar.fits", "lamost", "NO_VALID_PIXELS", "no pixel")),
                 zero_ivar, header=hdr, clobber=True)
    red = data.copy()
    red[2, :] = red[2, :] * 1.6  # 5900-14500 A: misses 4000-5600 A
    red_hdr = fitsio.FITSHDR(hdr.records())  # the header grid says the same (else not trusted)
    for key in ("COEFF0", "CRVAL1"):
        red_hdr[key] = hdr[key] + np.log10(1.6)
    fitsio.write(str(add("red_only.fits", "lamost", "NO_COVERAGE", "miss the grid range")), red,
                 header=red_hdr, clobber=True)
    # a wavelength row that disagrees with COEFF0/COEFF1 (here 1.6x): the header grid is used
    fitsio.write(str(add("row_off_header.fits", "lamost", "WAVE_FROM_HEADER", "")), red,
                 header=hdr, clobber=True)
    # DESI: drop B_FLUX; FLUX/IVAR shape mismatch; NaN-filled B_FLUX
    with fitsio.FITS(str(coadd)) as src:
        hdus = [(h.get_extname(), h.read(), h.read_header()) for h in src][1:]

    def write_desi(name, skip=(), replace=None):
        with fitsio.FITS(str(d / name), "rw", clobber=True) as f:
            for ext, arr, h in hdus:
                if ext in skip:
                    continue
                arr = (replace or {}).get(ext, arr)
                f.write(arr, extname=ext, header=h)

    write_desi("no_bflux.fits", skip=("B_FLUX",))
    out[str(d / "no_bflux.fits")] = ("desi", "MISSING_HDU", "B_FLUX")
    bflux = dict((e, a) for e, a, _ in hdus)["B_FLUX"]
    write_desi("bad_shape.fits", replace={"B_FLUX": bflux[:, :2000]})
    out[str(d / "bad_shape.fits")] = ("desi", "BAD_SHAPE", "2000 pixels")
    write_desi("nan_desi.fits", replace={"B_FLUX": np.full_like(bflux, np.nan)})
    out[str(d / "nan_desi.fits")] = ("desi", "NO_VALID_PIXELS", "no pixel")
    # the table layout without its FLUX column
    t = fitsio.read(str(lam_tab), ext="COADD")
    cols = [c for c in t.dtype.names if c != "FLUX"]
    with fitsio.FITS(str(add("coadd_noflux.fits", "lamost", "MISSING_HDU",
                             "COADD lacks column")), "rw", clobber=True) as f:
        f.write(None, header={"OBSID": 3703110, "RA": 138.08, "DEC": 27.89})
        f.write(t[cols], extname="COADD")
    return out


def test_corrupt_corpus_is_flagged_and_nothing_is_lost(shared_data, tmp_path):
    corpus = _corpus(shared_data, tmp_path)
    good_lamost = str(shared_data / "lamost" / "table_format_dr10" / "3706009.fits")
    for survey in ("lamost", "desi"):
        files = [p for p, (s, _, _) in corpus.items() if s == survey]
        if survey == "lamost":
            files += [good_lamost, good_lamost]  # the same spectrum twice: a duplicate ID
        rows = build_manifest(survey, files)
        assert set(rows["FILE"]) == set(files)  # every file is listed
        for path in files:
            if path == good_lamost:
                continue
            _, flag, reason = corpus[path]
            r = rows[rows["FILE"] == path]
            for one in r:
                assert flag in names(one["FLAGS"]), (path, names(one["FLAGS"]))
                if flags.BY_NAME[flag].fatal:
                    assert flags.is_fatal(one["FLAGS"])
                    assert reason in one["FLAG_REASON"], (path, one["FLAG_REASON"])
        if survey == "lamost":
            dup = rows[rows["FILE"] == good_lamost]
            assert sorted("DUPLICATE_ID" in names(v) for v in dup["FLAGS"]) == [False, True]


def test_manifest_fits_round_trip_and_fitsverify(shared_data, tmp_path):
    files = sorted(str(p) for p in (shared_data / "desi").glob("*coadd*.fits"))
    rows = build_manifest("desi", files,
                          redshift_files=sorted(str(p) for p in
                                                (shared_data / "desi").glob("*redrock*")))
    out = tmp_path / "manifest.fits"
    write_manifest(out, rows, {"SURVEY": "desi"})
    back = read_manifest(out)
    assert back.dtype == rows.dtype
    for name in rows.dtype.names:
        if rows.dtype[name].kind == "f":
            np.testing.assert_array_equal(back[name], rows[name])
        else:
            assert back[name].tolist() == rows[name].tolist(), name
    fv = shutil.which("fitsverify")
    if fv is None:
        pytest.skip("fitsverify not installed (apt-get install fitsverify)")
    r = subprocess.run([fv, "-q", str(out)], capture_output=True, text=True)
    assert "verification OK" in r.stdout, r.stdout + r.stderr
    # z from the redrock file reached the GALAXY target
    i = back["SPECID"] == 39633345008634465
    assert back["Z"][i][0] == pytest.approx(0.36874355) and back["CLASS"][i][0] == "GALAXY"


def test_compact_manifest_written_in_blocks_equals_the_full_rows(shared_data, tmp_path):
    """Rank 0's survey-scale form (text as bytes, FILE once per file, written in blocks)
    gives the same file as the rows written at once, with the corrupt corpus's reasons."""
    from specbridge.io.manifest import (
        COMPACT_DTYPE,
        compact_part,
        finish_compact,
        scan_file,
    )

    corpus = _corpus(shared_data, tmp_path)
    files = sorted(p for p, (s, _, _) in corpus.items() if s == "desi")
    files += sorted(str(p) for p in (shared_data / "desi").glob("*coadd*.fits"))
    rows = build_manifest("desi", files)
    parts = [compact_part("desi", scan_file("desi", f)) for f in files]
    assert COMPACT_DTYPE.itemsize < rows.dtype.itemsize / 5
    compact = finish_compact("desi", files, np.concatenate(parts),
                             np.array([p.size for p in parts]))
    assert compact.to_rows().tobytes() == rows.tobytes()
    write_manifest(tmp_path / "once.fits", rows)
    write_manifest(tmp_path / "blocks.fits", compact, block=7)
    a, b = (fitsio.read(str(tmp_path / n), ext="MANIFEST") for n in ("once.fits", "blocks.fits"))
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert (fitsio.read_header(str(tmp_path / "blocks.fits"), ext="MANIFEST")["NSPEC"]
            == rows.size > 7)


def test_finishing_in_chunks_equals_all_at_once(small_mock, monkeypatch):
    """Rank 0 cross-matches and keys the rows in chunks (bounded temporaries at 10^7 rows):
    the same manifest as in one piece."""
    import specbridge.io.manifest as m

    labels = read_apogee_allstar(small_mock["labels"])
    files = small_mock["desi"]
    parts = [m.compact_part("desi", m.scan_file("desi", f)) for f in files]
    sizes = np.array([p.size for p in parts])
    whole = m.finish_compact("desi", files, np.concatenate(parts), sizes, labels).rows
    monkeypatch.setattr(m, "FINISH_CHUNK", 7)
    chunked = m.finish_compact("desi", files, np.concatenate(parts), sizes, labels).rows
    assert whole.size > 7 * 3 and (whole["LABEL_ID"] != b"").sum() > 3
    assert chunked.tobytes() == whole.tobytes()


def test_manifest_cli(shared_data, tmp_path, tool_env):
    folder = shared_data / "lamost" / "mdwarfs_labelled"
    out = tmp_path / "m.fits"
    cols = ",".join(f"{k}={v}" for k, v in MDWARF_COLUMNS.items())
    r = subprocess.run(["specbridge", "manifest", "--survey", "lamost", "--output", str(out),
                        "--labels", str(folder / "labels.csv"), "--label-format", "table",
                        "--label-columns", cols, str(folder / "*.fits"),
                        str(tmp_path / "missing.fits")],
                       capture_output=True, text=True, env=tool_env)
    assert r.returncode == 0, r.stderr
    rows = read_manifest(out)
    assert rows.size == 55
    assert "UNREADABLE_FILE" in names(rows[rows["FILE"] == str(tmp_path / "missing.fits")]
                                      ["FLAGS"][0])
    assert "files/s" in r.stderr


# ---- the manifest under MPI: 2 ranks write what one process writes ---------------------------

def _mixed_inputs(shared_data: Path, d: Path) -> dict[str, list[str]]:
    """Per survey, a mix of real files: LAMOST in both layouts (image gzipped and not, two of
    class Unknown), DESI coadd and spectra files (one without FIBERMAP), unreadable files."""
    lam = shared_data / "lamost"
    image = sorted(str(p) for p in (lam / "image_format").glob("*.fits.gz"))[:12]
    table = sorted(str(p) for p in (lam / "table_format_dr10").glob("*.fits"))[:9]
    mdwarf = sorted(str(p) for p in (lam / "mdwarfs_labelled").glob("*.fits"))
    unknown = [p for p in mdwarf if fitsio.read_header(p).get("CLASS") != "STAR"]
    plain = d / "plain.fits"
    plain.write_bytes(gzip.decompress(Path(image[-1]).read_bytes()))
    (d / "empty.fits").write_bytes(b"")
    (d / "trunc.fits").write_bytes(Path(table[0]).read_bytes()[:2000])
    desi = sorted(str(p) for p in (shared_data / "desi").glob("*.fits") if "redrock" not in p.name)
    return {"lamost": sorted([*image, *table, *unknown, str(plain), str(d / "empty.fits"),
                              str(d / "missing.fits")]) + [str(d / "trunc.fits")],
            "desi": [*desi, str(d / "trunc.fits"), str(d / "missing.fits")],
            "redrock": sorted(str(p) for p in (shared_data / "desi").glob("*redrock*.fits")),
            "labels": [str(lam / "mdwarfs_labelled" / "labels.csv")]}


def _manifest_cmd(repo: Path, survey: str, out: Path, inputs: dict[str, list[str]]) -> list[str]:
    cmd = ["specbridge", "manifest", "--config", str(repo / "config.yaml"), "--survey", survey,
           "--output", str(out)]
    if survey == "desi":
        cmd += [a for rr in inputs["redrock"] for a in ("--redshifts", rr)]
    if survey == "lamost":  # labels: the M-dwarf catalogue (position and file-name matches)
        cmd += ["--labels", inputs["labels"][0], "--label-format", "table",
                "--label-columns", ",".join(f"{k}={v}" for k, v in MDWARF_COLUMNS.items())]
    return cmd + inputs[survey]


def _assert_same_rows(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.size == b.size
    for name in a.dtype.names:
        if a.dtype[name].kind == "f":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            assert a[name].tolist() == b[name].tolist(), name


@pytest.mark.mpi
@pytest.mark.parametrize("survey", ["lamost", "desi"])
def test_mpi_manifest_equals_one_process(survey, shared_data, repo, tmp_path, tool_env,
                                         mpiexec):
    inputs = _mixed_inputs(shared_data, tmp_path)
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"{survey}-{n}.fits"
        cmd = _manifest_cmd(repo, survey, out, inputs)
        r = subprocess.run([mpiexec, "-n", str(n), *cmd], capture_output=True, text=True,
                           env=tool_env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"over {n} rank(s)" in r.stderr and "files/s per rank" in r.stderr
        assert "ETA" in r.stderr  # progress of the whole job
        runs[n] = read_manifest(out)
    one, two = runs[1], runs[2]
    _assert_same_rows(one, two)
    # every input file is listed, in input order; the bad ones flagged, nothing lost
    files = list(dict.fromkeys(one["FILE"].tolist()))
    assert files == inputs[survey]
    bad = one[np.isin(one["FILE"], [str(tmp_path / f) for f in ("empty.fits", "missing.fits",
                                                                "trunc.fits")])]
    assert bad.size >= 2 and all("UNREADABLE_FILE" in names(v) or "MISSING_HDU" in names(v)
                                 for v in bad["FLAGS"])
    sel = (one["FLAGS"] & flags.flag("NOT_SELECTED")) != 0
    assert sel.any()  # the real DESI files are dark-time galaxies, empty and sky fibres
    if survey == "lamost":
        assert (~flags.is_fatal(one["FLAGS"])).sum() >= 20
        assert set(one["CLASS"][sel]) == {"UNKNOWN"}
        assert (one["LABEL_ID"] != "").any()


@pytest.mark.mpi
def test_mpi_manifest_bad_input_stops_every_rank(shared_data, repo, tmp_path, tool_env,
                                                 mpiexec):
    """A redrock file that is not one: every rank ends with the same one-line error, no hang,
    no manifest."""
    inputs = _mixed_inputs(shared_data, tmp_path)
    inputs["redrock"] = [str(shared_data / "lamost" / "table_format_dr10" / "3703110.fits")]
    out = tmp_path / "m.fits"
    r = subprocess.run([mpiexec, "-n", "2", *_manifest_cmd(repo, "desi", out, inputs)],
                       capture_output=True, text=True, env=tool_env, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("no REDSHIFTS or ZBEST HDU") == 2  # one line from each rank
    assert "Traceback" not in r.stderr
    assert not out.exists()


MAP_GATHER_SCRIPT = """
import logging, sys
from specbridge.parallel.executor import map_gather
from specbridge.parallel.mpi import get_comm, rank0_logger, run_or_abort
comm = get_comm()
log = rank0_logger("t", comm)
fail = int(sys.argv[1])

def compute(x):
    if x == fail:
        raise KeyError(f"boom on item {x}")
    return x * x

res = run_or_abort(comm, log, map_gather, "demo", list(range(9)), compute, comm, log,
                   [1.0 + (i % 3) for i in range(9)], "files")
if comm.rank == 0:
    print("RESULT", res)
else:
    assert res is None
"""


@pytest.mark.mpi
def test_map_gather_order_and_abort_over_ranks(tmp_path, tool_env, mpiexec):
    """Results come back in item order whichever rank computed them; an error on one rank
    ends every rank at once with one line naming the item."""
    import sys

    script = tmp_path / "mg.py"
    script.write_text(MAP_GATHER_SCRIPT)
    ok = subprocess.run([mpiexec, "-n", "3", sys.executable, str(script), "-1"],
                        capture_output=True, text=True, env=tool_env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"RESULT {[i * i for i in range(9)]}" in ok.stdout
    assert "demo: 9/9 files" in ok.stderr
    bad = subprocess.run([mpiexec, "-n", "3", sys.executable, str(script), "4"],
                         capture_output=True, text=True, env=tool_env, timeout=120)
    assert bad.returncode != 0 and "RESULT" not in bad.stdout
    assert "demo: file 4 (4) failed" in bad.stderr and "aborting the MPI job" in bad.stderr


MAP_GATHER_ROWS_SCRIPT = """
import logging, sys
import numpy as np
from specbridge.parallel.executor import map_gather_rows
from specbridge.parallel.mpi import get_comm, rank0_logger, run_or_abort
comm = get_comm()
log = rank0_logger("t", comm)
dt = np.dtype([("item", "i4"), ("k", "i4"), ("name", "S5")])

def rows_of(i):  # item i has i % 4 rows (some none)
    r = np.zeros(i % 4, dt)
    r["item"], r["k"], r["name"] = i, np.arange(i % 4), b"x%d" % i
    return r

out = run_or_abort(comm, log, map_gather_rows, "demo", list(range(23)), rows_of, dt, comm,
                   log, [1.0 + (i % 5) for i in range(23)], "files", int(sys.argv[1]))
if comm is None or comm.rank == 0:
    rows, sizes = out
    want = np.concatenate([rows_of(i) for i in range(23)])
    assert sizes.tolist() == [i % 4 for i in range(23)]
    assert rows.tobytes() == want.tobytes(), (rows, want)
    print("ROWS OK", rows.size)
else:
    assert out is None
"""


@pytest.mark.mpi
@pytest.mark.parametrize("message_bytes", [13, 1 << 20])
def test_map_gather_rows_over_ranks_in_bounded_messages(tmp_path, tool_env, mpiexec,
                                                        message_bytes):
    """Rows gathered in raw messages of at most ``message_bytes`` (13: one item each, 1 MiB:
    all at once) come back in item order, items without rows included."""
    import sys

    script = tmp_path / "mgr.py"
    script.write_text(MAP_GATHER_ROWS_SCRIPT)
    for n in (1, 3):
        r = subprocess.run([mpiexec, "-n", str(n), sys.executable, str(script),
                            str(message_bytes)],
                           capture_output=True, text=True, env=tool_env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "ROWS OK 33" in r.stdout


def test_map_gather_one_process_and_old_manifests(tmp_path):
    """Without MPI, map_gather is the plain map; a failing item is one line naming it. A
    manifest written before the target-bit columns still reads (bits 0)."""
    from specbridge.parallel.executor import ShardError, map_gather

    def only_short(x: str) -> int:
        if len(x) > 1:
            raise OSError(f"no {x}")
        return len(x)

    assert map_gather("t", ["a", "bb", "ccc"], len, weights=[3, 1, 2]) == [1, 2, 3]
    with pytest.raises(ShardError, match=r"t: file 1 \(bb\) failed: .*no bb"):
        map_gather("t", ["a", "bb"], only_short, unit="files")
    rows = build_manifest("lamost", [str(tmp_path / "missing.fits")])
    old = rows[[n for n in rows.dtype.names if n not in ("DESI_TARGET", "MWS_TARGET")]]
    fitsio.write(str(tmp_path / "old.fits"), np.array(old.tolist(), dtype=[
        (n, "S256" if old.dtype[n].kind == "U" else old.dtype[n]) for n in old.dtype.names]),
        extname="MANIFEST")
    back = read_manifest(tmp_path / "old.fits")
    assert back["DESI_TARGET"].tolist() == [0] and back["FILE"][0] == rows["FILE"][0]
