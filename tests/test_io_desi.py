"""DESI readers against every real DESI file in ../shared/data/desi, with concrete values."""

from __future__ import annotations

import numpy as np
import pytest

from specbridge.io import desi
from specbridge.io.fitsutil import FormatError

ARM_PIX = {"B": (2751, 3600.0, 5800.0), "R": (2326, 5760.0, 7620.0), "Z": (2881, 7520.0, 9824.0)}

# file -> (rows, TARGETIDs or None, has MASK/RESOLUTION, FIBERMAP OBJTYPE of row 3 or None)
FILES = {
    "coadd-5-169-thru20210419.fits": (
        5, [-1695072, 39633297352951412, -1695064, -1695073, 39633300968442591], True, ""),
    "spectra-5-169-thru20210419.fits": (
        5, [-1695072, 39633297352951412, -1695064, -1695073, 39633300968442591], True, ""),
    "coadd-sv3-dark-26065.fits": (
        5, [-2713437, -2713415, 39627866878511337, 616088619186127404, 39627866878514741],
        True, "SKY"),
    "spectra-sv3-dark-26065.fits": (
        5, [-2713437, -2713415, 39627866878511337, 616088619186127404, 39627866878514741],
        True, "SKY"),
    "fsf-coadd-4-80613-thru20210324.fits": (1, [39633345008634465], True, None),
    "fsf-coadd-special-dark-27247.fits": (1, [39089837499744649], True, None),
    "quasarnp-test_coadd.fits": (25, None, False, None),
}


@pytest.fixture(scope="module")
def desi_dir(shared_data):
    return shared_data / "desi"


def test_all_spectral_files_are_covered(desi_dir):
    present = {p.name for p in desi_dir.glob("*.fits") if "redrock" not in p.name}
    assert present == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_desi_file(desi_dir, name):
    nrows, tids, has_extras, objtype3 = FILES[name]
    path = desi_dir / name
    assert desi.desi_nrows(path) == nrows
    assert desi.desi_arms(path) == ["B", "R", "Z"]
    fm = desi.read_fibermap(path)
    if tids is None:
        assert fm is None
    else:
        assert fm["TARGETID"].tolist() == tids
        if objtype3 is not None:
            assert fm["OBJTYPE"][3].strip() == objtype3
    for arm, (npix, w0, w1) in ARM_PIX.items():
        a = desi.read_arm(path, arm, parts=("FLUX", "IVAR", "MASK", "RESOLUTION"))
        assert a.wave.shape == (npix,)
        assert a.wave[0] == pytest.approx(w0) and a.wave[-1] == pytest.approx(w1)
        assert a.flux.shape == a.ivar.shape == (nrows, npix)
        assert a.flux.dtype == np.float32
        if has_extras:
            assert a.mask.shape == (nrows, npix) and a.mask.dtype == np.int32
            assert a.resolution.shape == (nrows, 11, npix)
            # rows of a resolution matrix sum to ~1 (flux-conserving) where defined
            s = a.resolution.sum(axis=1)
            good = a.ivar > 0
            if good.any():
                assert np.median(s[good]) == pytest.approx(1.0, abs=0.02)
        else:
            assert a.mask is None and a.resolution is None


def test_row_subset_reads_the_same_values(desi_dir):
    path = desi_dir / "spectra-sv3-dark-26065.fits"  # MASK is a tile-compressed image here
    full = desi.read_arm(path, "B", parts=("FLUX", "IVAR", "MASK", "RESOLUTION"))
    sub = desi.read_arm(path, "B", rows=[4, 2], parts=("FLUX", "IVAR", "MASK", "RESOLUTION"))
    for part in ("flux", "ivar", "mask", "resolution"):
        np.testing.assert_array_equal(getattr(sub, part), getattr(full, part)[[4, 2]])
    only_flux = desi.read_arm(path, "B", rows=[1], parts=("FLUX",))
    assert only_flux.ivar is None and only_flux.mask is None
    assert desi.read_fibermap(path, rows=[3])["TARGETID"].tolist() == [616088619186127404]


def test_redrock_files(desi_dir):
    z = desi.redshift_lookup(sorted(desi_dir.glob("fsf-redrock-*.fits")))
    assert set(z) == {39633345008634465, 39089837499744649}
    zz, zerr, zwarn, spectype = z[39633345008634465]
    assert zz == pytest.approx(0.36874355, rel=1e-6) and zwarn == 0 and spectype == "GALAXY"


def test_optional_and_missing_hdus(desi_dir):
    a = desi.read_arm(desi_dir / "quasarnp-test_coadd.fits", "B", parts=("FLUX", "MASK"))
    assert a.flux.shape == (25, 2751) and a.mask is None  # MASK is optional
    with pytest.raises(FormatError, match="no REDSHIFTS or ZBEST HDU"):
        desi.read_redshifts(desi_dir / "coadd-5-169-thru20210419.fits")


# ---- every real DESI file through the manifest scan: its expected outcome ---------------------
# file -> per-row flags besides NO_REDSHIFT (no redrock file given), or a fatal per-file error.
# Short names: NV NO_VALID_PIXELS, EF EMPTY_FIBER, SF SKY_FIBER, LS LOW_SNR, ID NO_ID.
# Checked and consistent in every file: *_WAVELENGTH vacuum Angstrom (BUNIT where present),
# strictly increasing, the same length as *_FLUX/*_IVAR; no NaN/inf in FLUX/IVAR/RESOLUTION; no
# negative IVAR; MASK set exactly where IVAR = 0 in the spectra-* files.
SHORT = {"NV": "NO_VALID_PIXELS", "EF": "EMPTY_FIBER", "SF": "SKY_FIBER", "LS": "LOW_SNR",
         "ID": "NO_ID"}
QNP = "ID+LS ID ID+LS ID+LS ID ID ID+LS ID+LS ID ID ID+LS ID+NV ID+LS ID ID+LS ID+LS ID ID+LS " \
      "ID+LS ID ID+LS ID+LS ID ID ID+LS"
DESI_OUTCOMES = {
    "coadd-5-169-thru20210419.fits": "NV+EF NV NV+EF NV+EF LS",
    "spectra-5-169-thru20210419.fits": "NV+EF NV NV+EF NV+EF LS",
    "coadd-sv3-dark-26065.fits": "NV+EF NV+EF LS NV+SF LS",
    "spectra-sv3-dark-26065.fits": "NV+EF NV+EF LS NV+SF NV",  # row 4: IVAR 0 in this exposure
    "fsf-coadd-4-80613-thru20210324.fits": "-",
    "fsf-coadd-special-dark-27247.fits": "LS",
    "quasarnp-test_coadd.fits": QNP,  # no FIBERMAP, no MASK/RESOLUTION, no BUNIT
    # redrock files are not spectra
    "fsf-redrock-4-80613-thru20210324.fits": ("MISSING_HDU", "missing HDU(s) B_WAVELENGTH"),
    "fsf-redrock-special-dark-27247.fits": ("MISSING_HDU", "missing HDU(s) B_WAVELENGTH"),
}


@pytest.mark.parametrize("name", sorted(DESI_OUTCOMES))
def test_every_real_file_has_its_expected_outcome(desi_dir, name):
    from specbridge import flags
    from specbridge.io.manifest import scan_desi_file

    assert {p.name for p in desi_dir.glob("*.fits")} == set(DESI_OUTCOMES)
    rows = scan_desi_file(str(desi_dir / name))
    want = DESI_OUTCOMES[name]
    if isinstance(want, tuple):
        assert rows.size == 1 and rows["ROW"][0] == -1
        assert flags.names(int(rows["FLAGS"][0])) == [want[0]]
        assert want[1] in rows["FLAG_REASON"][0]
        return
    expected = [set() if w == "-" else {SHORT[c] for c in w.split("+")} for w in want.split()]
    got = [set(flags.names(int(v))) - {"NO_REDSHIFT"} for v in rows["FLAGS"]]
    assert got == expected
    assert np.all(rows["FLAGS"] & flags.flag("NO_REDSHIFT"))
    assert np.allclose(rows["WAVE_MIN"], 3600.0) and np.allclose(rows["WAVE_MAX"], 5800.0)
    for arm in desi.desi_arms(desi_dir / name):
        w = desi.read_arm(desi_dir / name, arm, parts=()).wave
        assert np.all(np.diff(w) > 0) and 3600 <= w[0] and w[-1] < 9825


# file -> (SURVEY, PROGRAM) as DESI records them: the primary header of HEALPix-grouped files;
# the tile-grouped (cumulative) files of this vintage carry neither, nor does their name
SURVEY_PROGRAM = {
    "coadd-5-169-thru20210419.fits": ("", ""),
    "spectra-5-169-thru20210419.fits": ("", ""),
    "coadd-sv3-dark-26065.fits": ("sv3", "dark"),
    "spectra-sv3-dark-26065.fits": ("sv3", "dark"),
    "fsf-coadd-4-80613-thru20210324.fits": ("", ""),
    "fsf-coadd-special-dark-27247.fits": ("special", "dark"),
    "quasarnp-test_coadd.fits": ("", ""),
}


@pytest.mark.parametrize("name", sorted(SURVEY_PROGRAM))
def test_survey_and_program_of_real_files(desi_dir, name):
    assert desi.read_survey_program(desi_dir / name) == SURVEY_PROGRAM[name]


def test_survey_and_program_from_names_and_headers(desi_dir, tmp_path):
    assert desi.survey_program_from_name("coadd-main-bright-10016.fits") == ("main", "bright")
    assert desi.survey_program_from_name("spectra-sv3-dark-26065.fits.gz") == ("sv3", "dark")
    assert desi.survey_program_from_name("/a/b/redrock-main-backup-7.fits") == ("main", "backup")
    for other in ("coadd-5-169-thru20210419.fits", "coadd-0-80605-20201215.fits",
                  "coadd-main-bright.fits", "nan_b.fits",
                  "fsf-coadd-special-dark-27247.fits"):
        assert desi.survey_program_from_name(other) == ("", ""), other
    # the header wins over the name; the name fills in where the header says nothing
    assert desi.survey_program("coadd-main-dark-1.fits", {"SURVEY": "SV3 ", "PROGRAM": ""}) \
        == ("sv3", "dark")
    assert desi.survey_program("coadd-main-dark-1.fits", None) == ("main", "dark")
    moved = tmp_path / "coadd-main-bright-26065.fits"
    moved.write_bytes((desi_dir / "coadd-sv3-dark-26065.fits").read_bytes())
    assert desi.read_survey_program(moved) == ("sv3", "dark")
    (tmp_path / "coadd-main-bright-1.fits").write_bytes(b"not FITS")
    with pytest.raises(FormatError):
        desi.read_survey_program(tmp_path / "coadd-main-bright-1.fits")
