"""LAMOST readers against every real LAMOST file in the four ../shared/data/lamost folders."""

from __future__ import annotations

import csv
from pathlib import Path

import fitsio
import numpy as np
import pytest

from specbridge import flags
from specbridge.io import lamost
from specbridge.io.fitsutil import FormatError


@pytest.fixture(scope="module")
def lamost_dir(shared_data):
    return shared_data / "lamost"


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if ".fits" in p.name)


def test_every_file_reads_with_sane_values(lamost_dir):
    counts = {}
    for folder in ("image_format", "table_format_dr10", "mdwarfs_labelled"):
        files = _files(lamost_dir / folder)
        counts[folder] = len(files)
        for f in files:
            s = lamost.read_lamost(f)
            n = s.wave.size
            assert 3700 <= n <= 3915, f
            assert s.flux.shape == s.ivar.shape == s.andmask.shape == s.ormask.shape == (n,)
            # pixels sit on the LAMOST log grid 3.5682 + 1e-4 i (some spectra start later)
            i0 = (np.log10(s.wave[0]) - 3.5682) / 1e-4
            assert 3690 < s.wave[0] < 3900 and abs(i0 - round(i0)) < 0.02, f
            assert np.all(np.diff(s.wave) > 0)
            # log-linear with step 1e-4 in log10
            assert np.median(np.diff(np.log10(s.wave))) == pytest.approx(1e-4, rel=1e-3)
            assert s.meta["OBSID"] > 0
            assert -90 <= s.meta["DEC"] <= 90 and 0 <= s.meta["RA"] < 360
            assert s.meta["LAYOUT"] in ("image", "table")
    assert counts == {"image_format": 222, "table_format_dr10": 25, "mdwarfs_labelled": 54}


KNOWN = {
    # file: (layout, npix, OBSID, last wavelength, SNRG, CLASS, Z, DATA_V)
    "image_format/spec-55859-F5902_sp01-001_dr7.fits.gz":
        ("image", 3908, 101001, 9097.04, 12.22, "STAR", -0.0001387, "LAMOST DR7"),
    "image_format/spec-55859-F5902_sp01-013_dr8.fits.gz":
        ("table", 3908, 101013, 9097.04, 5.56, "STAR", None, None),
    "table_format_dr10/3703110.fits":
        ("table", 3909, 3703110, 9099.13, 19.35, "STAR", -5.617e-05, "LAMOST DR10"),
    "mdwarfs_labelled/spec-55917-B5591705_sp13-116.fits":
        ("image", 3904, 19013116, None, 7.8, "STAR", -0.0001102, "LAMOST DR7"),
}


@pytest.mark.parametrize("rel", sorted(KNOWN))
def test_known_files(lamost_dir, rel):
    layout, npix, obsid, wlast, snrg, cls, z, data_v = KNOWN[rel]
    s = lamost.read_lamost(lamost_dir / rel)
    assert s.meta["LAYOUT"] == layout and s.wave.size == npix and s.meta["OBSID"] == obsid
    if wlast is not None:
        assert s.wave[-1] == pytest.approx(wlast, abs=0.01)
    assert s.meta["SNRG"] == pytest.approx(snrg)
    assert s.meta["CLASS"] == cls
    if z is not None:
        assert s.meta["Z"] == pytest.approx(z)
    if data_v is not None:
        assert s.meta["DATA_V"] == data_v
    h = lamost.read_lamost_header(lamost_dir / rel)
    assert h["OBSID"] == obsid and h["LAYOUT"] == layout


def test_dr10_file_names_are_obsids(lamost_dir):
    for f in _files(lamost_dir / "table_format_dr10"):
        assert lamost.read_lamost_header(f)["OBSID"] == int(f.name.split(".")[0])


def test_image_catalogue_obsids_match_headers(lamost_dir):
    folder = lamost_dir / "image_format"
    with open(folder / "junhui_ccf_test_catalog.csv") as fh:
        rows = list(csv.DictReader(fh))
    checked = 0
    for r in rows:
        f = folder / Path(r["combined_file"]).name
        if f.exists():
            h = lamost.read_lamost_header(f)
            assert h["OBSID"] == int(r["combined_obsid"])
            # the catalogue's RA is RA_OBS (the fibre position, offset for bright stars)
            assert h["RA"] == pytest.approx(float(r["combined_ra_obs"]), abs=0.01)
            assert h["SNRG"] == pytest.approx(float(r["combined_snrg"]), abs=0.01)
            checked += 1
    assert checked >= 20


def test_dr1_header_spelling():
    hdr = {"OBSID": 7, "RA": 10.0, "DEC": 5.0, "SN_G": 33.0, "SN_R": 44.0, "Z": 0.0001}
    m = lamost.header_meta(hdr, "x.fits")
    assert m["SNRG"] == 33.0 and m["SNRR"] == 44.0 and np.isnan(m["SNRI"])


# ---- every real LAMOST file: its expected outcome ---------------------------------------------
#
# folder -> (number of files, default outcome, {file: outcome} exceptions). An outcome is
# ("ok", layout, reader flags) or ("error", flag, reason fragment). The 2011 pilot files
# (dr1_pilot) have a third image row that is the continuum-normalised flux (EXTEN0 'Flux Inverse
# Subcontinuum Andmask Ormask'), not wavelengths: the header grid is used and flagged.
OK_IMAGE, OK_TABLE = ("ok", "image", ()), ("ok", "table", ())
OUTCOMES = {
    "dr1_pilot": (176, ("ok", "image", ("WAVE_FROM_HEADER",)), {}),
    "image_format": (222, OK_IMAGE, {"spec-55859-F5902_sp01-013_dr8.fits.gz": OK_TABLE}),
    "mdwarfs_labelled": (54, OK_IMAGE, {}),
    "table_format_dr10": (25, OK_TABLE, {}),
}
# files whose grid is not the usual 3909-pixel 3700-9100 A one: (npix, first, last wavelength)
ODD_GRIDS = {
    "spec-55915-F5591503_sp05-112.fits.gz": (3751, 3837.1, 9099.1),  # COEFF0 = 3.584
    # WFITTYPE = -9999; the row starts at 3700.000 A, 0.017 pixel off 10^3.5682 (within tolerance)
    "spec-55859-F5907_sp12-016.fits.gz": (3820, 3700.0, 8914.6),
    "spec-56944-EG025338N015809M01_sp06-214.fits.gz": (3820, 3700.0, 8914.6),
    "spec-57330-EG220307N031056M01_sp07-153.fits.gz": (3820, 3700.0, 8914.6),
    "spec-57330-EG220307N031056M01_sp07-173.fits.gz": (3820, 3700.0, 8914.6),
    "spec-58632-HD201303N115103V01_sp11-247.fits": (3820, 3700.0, 8914.6),
}
# header Z = Z_ERR = -9999 (LAMOST's null): read as NaN, not as a redshift of -9999
NULL_Z = {"spec-56201-EG020224N124106V01_sp01-098.fits",
          "spec-56561-KP195920N454621V02_sp14-168.fits",
          "spec-57461-KP082157N144605V01_sp05-174.fits",
          "spec-58632-HD201303N115103V01_sp11-247.fits"}


def _outcome(path: Path):
    try:
        s = lamost.read_lamost(path)
    except FormatError as err:
        return ("error", err.flag, err.reason), None
    return ("ok", s.meta["LAYOUT"], tuple(flags.names(s.flags))), s


@pytest.mark.parametrize("folder", sorted(OUTCOMES))
def test_every_real_file_has_its_expected_outcome(lamost_dir, folder):
    n, default, exceptions = OUTCOMES[folder]
    files = _files(lamost_dir / folder)
    assert len(files) == n
    assert set(exceptions) <= {f.name for f in files}
    seen_odd = set()
    for f in files:
        want = exceptions.get(f.name, default)
        got, s = _outcome(f)
        if want[0] == "error":
            assert got[:2] == want[:2] and want[2] in got[2], (f.name, got)
            continue
        assert got == want, (f.name, got)
        w = s.wave
        assert w.dtype == np.float64 and s.flux.shape == s.ivar.shape == w.shape
        assert np.all(np.diff(w) > 0), f.name
        assert 3600 <= w[0] and w[-1] <= 9200, f.name
        # on the LAMOST log-linear grid 3.5682 + 1e-4 i (to 0.02 pixel)
        i = (np.log10(w) - 3.5682) / 1e-4
        assert np.max(np.abs(i - np.round(i))) < 0.02, f.name
        assert np.all(np.diff(np.round(i)) == 1), f.name
        from_header = "WAVE_FROM_HEADER" in got[2]
        assert s.meta["WAVE_SOURCE"] == ("header" if from_header else "row")
        assert bool(s.meta["WAVE_NOTE"]) == from_header
        assert s.meta["VACUUM"] is True
        if f.name in ODD_GRIDS:
            npix, w0, w1 = ODD_GRIDS[f.name]
            assert (w.size, round(w[0], 1), round(w[-1], 1)) == (npix, w0, w1), f.name
            seen_odd.add(f.name)
        else:
            assert w.size >= 3883 and round(w[0], 1) == 3700.0, f.name
        if f.name in NULL_Z:
            assert np.isnan(s.meta["Z"]) and np.isnan(s.meta["Z_ERR"])
        else:
            assert np.isfinite(s.meta["Z"]) and abs(s.meta["Z"]) < 0.01, f.name
    assert seen_odd == {k for k in ODD_GRIDS if (lamost_dir / folder / k).exists()}


def test_pilot_wavelength_row_is_not_wavelengths(lamost_dir):
    """A pilot file whose third row is positive (formerly taken as wavelengths and rejected as
    BAD_SHAPE 'wavelengths not increasing'): the header grid is used, flagged, explained."""
    f = lamost_dir / "dr1_pilot" / "spec-55862-B6212_sp06-003.fits"
    raw = fitsio.read(str(f))
    assert raw.shape == (5, 3904) and raw[2].min() > 0 and 0.2 < np.median(raw[2]) < 1.3
    s = lamost.read_lamost(f)
    assert flags.names(s.flags) == ["WAVE_FROM_HEADER"]
    np.testing.assert_allclose(s.wave, 10 ** (3.5682 + 1e-4 * np.arange(3904)), rtol=1e-12)
    assert s.meta["WAVE_NOTE"].startswith("image row 3 (Subcontinuum) is not increasing")
    np.testing.assert_array_equal(s.flux, raw[0])  # flux and ivar are rows 1 and 2 as ever
    np.testing.assert_array_equal(s.ivar, raw[1])
    assert s.meta["OBSID"] is None and s.meta["SNRG"] == pytest.approx(71.41)


# ---- the checks on synthetic variants of a real file -------------------------------------------

@pytest.fixture(scope="module")
def image_template(lamost_dir):
    f = lamost_dir / "mdwarfs_labelled" / "spec-55917-B5591705_sp13-116.fits"
    return fitsio.read_header(str(f)), fitsio.read(str(f))


def _write(tmp_path, name, header, data):
    path = tmp_path / name
    fitsio.write(str(path), data, header=header, clobber=True)
    return path


def test_row_agreeing_within_tolerance_is_used(tmp_path, image_template):
    hdr, data = image_template
    d = data.copy()
    d[2] = d[2] * 10 ** (0.05 * 1e-4)  # 0.05 pixel off the header grid
    s = lamost.read_lamost(_write(tmp_path, "a.fits", hdr, d))
    assert s.flags == 0 and s.meta["WAVE_SOURCE"] == "row"
    np.testing.assert_array_equal(s.wave, d[2].astype(np.float64))


def test_row_off_the_header_grid_is_replaced(tmp_path, image_template):
    hdr, data = image_template
    d = data.copy()
    d[2] = d[2] * 10 ** (2e-4)  # 2 pixels off COEFF0/COEFF1, still increasing
    s = lamost.read_lamost(_write(tmp_path, "b.fits", hdr, d))
    assert flags.names(s.flags) == ["WAVE_FROM_HEADER"]
    assert s.meta["WAVE_NOTE"] == "image row 3 (Wavelength) is up to 2 pixels off COEFF0/COEFF1"
    grid = 10 ** (hdr["COEFF0"] + hdr["COEFF1"] * np.arange(d.shape[1]))
    np.testing.assert_allclose(s.wave, grid)


def test_row_without_header_grid(tmp_path, image_template):
    hdr, data = image_template
    bare = fitsio.FITSHDR([r for r in hdr.records()
                           if r["name"] not in ("COEFF0", "COEFF1", "CRVAL1", "CD1_1")])
    s = lamost.read_lamost(_write(tmp_path, "c.fits", bare, data))
    assert s.flags == 0 and s.meta["WAVE_SOURCE"] == "row"  # nothing to check it against
    d = data.copy()
    d[2] = d[2][::-1]
    msg = r"image row 3 \(Wavelength\) is not increasing .* the header has no COEFF0"
    with pytest.raises(FormatError, match=msg) as e:
        lamost.read_lamost(_write(tmp_path, "d.fits", bare, d))
    assert e.value.flag == "BAD_SHAPE"


def test_air_wavelengths_are_converted(tmp_path, image_template):
    hdr, data = image_template
    air = fitsio.FITSHDR([r for r in hdr.records() if r["name"] != "VACUUM"])
    air.add_record({"name": "VACUUM", "value": False})
    s = lamost.read_lamost(_write(tmp_path, "e.fits", air, data))
    assert s.meta["VACUUM"] is False and s.flags == 0
    ratio = s.wave / data[2].astype(np.float64)
    assert 1.00027 < ratio[-1] < ratio[0] < 1.00030  # n(air) - 1, larger in the blue
    np.testing.assert_allclose(lamost.air_to_vacuum(np.array([5000.0])), [5001.394], atol=0.002)


def test_lamost_null_values_are_nan():
    m = lamost.header_meta({"Z": -9999, "Z_ERR": -9999.0, "SNRI": -9999.0, "SNRG": 12.0,
                            "RA": 1.0, "DEC": 2.0}, "x.fits")
    assert np.isnan(m["Z"]) and np.isnan(m["Z_ERR"]) and np.isnan(m["SNRI"])
    assert m["SNRG"] == 12.0 and m["VACUUM"] is None
