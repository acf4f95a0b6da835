"""Target selection at the manifest: a DESI file mixing stars, galaxies, quasars, sky and bad
fibres keeps a manifest row for every spectrum, and only the selected stars are preprocessed."""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
import pytest

from specbridge import flags
from specbridge.config import validate_config
from specbridge.io.manifest import build_manifest, read_manifest
from specbridge.io.selection import DESI_TARGET_BITS, ZWARN_BITS, Selection

MWS_ANY = 1 << DESI_TARGET_BITS["MWS_ANY"]
BGS_ANY = 1 << DESI_TARGET_BITS["BGS_ANY"]
#: (OBJTYPE, SPECTYPE, Z, ZWARN, DESI_TARGET, SV3_DESI_TARGET, MWS_TARGET, selected by default)
FIBRES = (
    ("TGT", "STAR", 1e-4, 0, MWS_ANY, 0, 1, True),        # an MWS star
    ("TGT", "STAR", -2e-4, 4, BGS_ANY, 0, 0, True),       # a BGS target redrock calls a star
    ("TGT", "GALAXY", 0.31, 0, BGS_ANY, 0, 0, False),     # a BGS galaxy
    ("TGT", "GALAXY", 0.82, 0, 1 << 0, 0, 0, False),      # an LRG
    ("TGT", "QSO", 2.1, 0, 1 << 2, 0, 0, False),          # a quasar
    ("SKY", "GALAXY", 0.5, 1, 1 << 32, 0, 0, False),      # a sky fibre
    ("TGT", "GALAXY", 0.01, 0, 0, MWS_ANY, 0, True),      # an SV3 MWS target called a galaxy
    ("TGT", "STAR", 0.0, 1 << ZWARN_BITS["NODATA"], MWS_ANY, 0, 1, False),  # no data
    ("BAD", "STAR", 1e-4, 0, MWS_ANY, 0, 1, False),       # a broken fibre
)


def _star_like(wave: np.ndarray, seed: int) -> np.ndarray:
    """A smooth positive spectrum with a few absorption lines, 1e-17 erg/s/cm2/A, (npix,)."""
    rng = np.random.default_rng(seed)
    cont = 20.0 * (wave / 5000.0) ** -1.5
    lines = sum(0.4 * np.exp(-0.5 * ((wave - c) / 3.0) ** 2)
                for c in (4101.7, 4340.5, 4861.3, 5183.6, 5270.0, 6562.8, 8542.1))
    return (cont * (1 - lines) + rng.normal(0, 0.2, wave.size)).astype(np.float32)


def write_mixed_desi(shared_data: Path, d: Path) -> tuple[str, str]:
    """A DESI coadd (the real B/R/Z wavelength grids) with the fibres of :data:`FIBRES` and
    its redrock file; returns (coadd path, redrock path)."""
    real = shared_data / "desi" / "coadd-sv3-dark-26065.fits"
    n = len(FIBRES)
    fm = np.zeros(n, dtype=[("TARGETID", "i8"), ("TARGET_RA", "f8"), ("TARGET_DEC", "f8"),
                            ("OBJTYPE", "S3"), ("DESI_TARGET", "i8"), ("MWS_TARGET", "i8"),
                            ("SV3_DESI_TARGET", "i8"), ("SV3_MWS_TARGET", "i8")])
    fm["TARGETID"] = 39633000000000000 + np.arange(n)
    fm["TARGET_RA"], fm["TARGET_DEC"] = 150.0 + 0.01 * np.arange(n), 2.0
    zt = np.zeros(n, dtype=[("TARGETID", "i8"), ("Z", "f8"), ("ZERR", "f8"), ("ZWARN", "i8"),
                            ("SPECTYPE", "S6")])
    zt["TARGETID"], zt["ZERR"] = fm["TARGETID"], 1e-5
    for i, (obj, spectype, z, zwarn, dt, sv3, mws, _) in enumerate(FIBRES):
        fm["OBJTYPE"][i], fm["DESI_TARGET"][i], fm["SV3_DESI_TARGET"][i] = obj, dt, sv3
        fm["MWS_TARGET"][i] = mws
        zt["Z"][i], zt["ZWARN"][i], zt["SPECTYPE"][i] = z, zwarn, spectype
    coadd, rr = d / "coadd-mixed.fits", d / "redrock-mixed.fits"
    with fitsio.FITS(str(real)) as src, fitsio.FITS(str(coadd), "rw", clobber=True) as out:
        out.write(None, header={"SURVEY": "sv3", "PROGRAM": "bright"})
        out.write(fm, extname="FIBERMAP")
        for arm in ("B", "R", "Z"):
            wave = src[f"{arm}_WAVELENGTH"].read().astype(np.float64)
            flux = np.stack([_star_like(wave, i) for i in range(n)])
            out.write(wave, extname=f"{arm}_WAVELENGTH")
            out.write(flux, extname=f"{arm}_FLUX")
            out.write(np.full_like(flux, 25.0), extname=f"{arm}_IVAR")
            out.write(np.zeros(flux.shape, np.int32), extname=f"{arm}_MASK")
    fitsio.write(str(rr), zt, extname="REDSHIFTS", clobber=True)
    return str(coadd), str(rr)


@pytest.fixture()
def mixed(shared_data, tmp_path):
    return write_mixed_desi(shared_data, tmp_path)


def _not_selected(rows: np.ndarray) -> np.ndarray:
    return (rows["FLAGS"] & flags.flag("NOT_SELECTED")) != 0


def test_default_selection_is_the_mws_rule(mixed):
    coadd, rr = mixed
    rows = build_manifest("desi", [coadd], redshift_files=[rr],
                          selection=Selection.from_config(validate_config({})["selection"]))
    assert rows.size == len(FIBRES)  # a row for every fibre
    usable = ~flags.is_fatal(rows["FLAGS"])
    assert usable.tolist() == [f[-1] for f in FIBRES]
    # the sky fibre keeps its own reason; the others left out say which cut
    assert "SKY_FIBER" in flags.names(int(rows["FLAGS"][5])) and not _not_selected(rows)[5]
    assert _not_selected(rows).tolist() == [False, False, True, True, True, False, False, True,
                                            True]
    reason = list(rows["FLAG_REASON"])
    assert reason[2].startswith("not selected: SPECTYPE GALAXY, DESI_TARGET 0x1000000000000000")
    assert "neither SPECTYPE STAR nor a selected target bit" in reason[4]
    assert reason[7] == "not selected: ZWARN NODATA"
    assert reason[8] == "not selected: OBJTYPE BAD not in TGT"
    # an MWS target redrock calls a galaxy: selected (the MWS VAC's rule), NOT_STAR kept
    assert "NOT_STAR" in flags.names(int(rows["FLAGS"][6]))
    assert rows["DESI_TARGET"][6] == MWS_ANY  # SV3_DESI_TARGET read


def test_selection_settings_change_what_is_selected(mixed):
    coadd, rr = mixed
    base = validate_config({})["selection"]
    both = validate_config({"selection": {"desi": {"combine": "all"}}})["selection"]
    rows = build_manifest("desi", [coadd], redshift_files=[rr],
                          selection=Selection.from_config(both))
    assert (~flags.is_fatal(rows["FLAGS"])).tolist() == [True] + [False] * 8
    none = {"desi": {"objtype": [], "spectype": [], "target_bits": {}, "zwarn_reject": []}}
    rows = build_manifest("desi", [coadd], redshift_files=[rr],
                          selection=Selection.from_config(validate_config(
                              {"selection": none})["selection"]))
    assert not _not_selected(rows).any()
    assert base["desi"]["target_bits"] == {"DESI_TARGET": ["MWS_ANY"], "MWS_TARGET": "any"}
    # without a selection (the library default) nothing is flagged
    assert not _not_selected(build_manifest("desi", [coadd], redshift_files=[rr])).any()


def test_lamost_class_selection(shared_data):
    files = sorted(str(p) for p in (shared_data / "lamost" / "mdwarfs_labelled").glob("*.fits"))
    rows = build_manifest("lamost", files, selection=Selection())
    out = _not_selected(rows)
    assert out.sum() == 2 and set(rows["CLASS"][out]) == {"UNKNOWN"}
    assert set(rows["FLAG_REASON"][out]) == {"not selected: CLASS UNKNOWN not in STAR"}


def test_unselected_spectra_are_not_preprocessed(mixed, tmp_path):
    """Manifest stage, then preprocessing: every fibre has a row in both; only the selected
    ones have data."""
    from specbridge.io.shards import read_index, read_shard
    from specbridge.stages import manifest, preprocess

    coadd, rr = mixed
    cfg = validate_config({"outdir": str(tmp_path / "out")})
    m = tmp_path / "desi.fits"
    manifest.run(cfg, {"files": [coadd], "redshifts": [rr]}, {"manifest": str(m)},
                 survey="desi")
    rows = read_manifest(m)
    assert rows.size == len(FIBRES)
    index = tmp_path / "pre" / "index.h5"
    preprocess.run(cfg, {"manifest": str(m)}, {"index": str(index)})
    parts = [read_shard(s["path"], ("ivar", "flags", "manifest_row", "specid"))
             for s in read_index(index)]
    ivar = np.concatenate([p["ivar"] for p in parts])
    fl = np.concatenate([p["flags"] for p in parts])
    assert np.concatenate([p["manifest_row"] for p in parts]).tolist() == list(range(len(FIBRES)))
    has_data = (ivar > 0).sum(axis=1) > 0
    selected = np.array([f[-1] for f in FIBRES])
    assert has_data.tolist() == selected.tolist()
    assert not flags.is_fatal(fl[selected]).any() and flags.is_fatal(fl[~selected]).all()
    # five left out by the selection, the sky fibre by its own fatal flag
    assert ((fl[~selected] & flags.flag("NOT_SELECTED")) != 0).sum() == 5
