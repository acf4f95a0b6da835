"""LAMOST readers against every real LAMOST file in the three ../shared/data/lamost folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from specbridge.io import lamost


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
