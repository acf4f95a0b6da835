"""The labelled mock survey: LAMOST- and DESI-format files of stars with known labels, and an
APOGEE allStar-like label catalogue, written in the real surveys' formats (read back by the
same readers as real files).

Pipeline per star: labels -> MILES emulator (rest frame, vacuum, FWHM 2.5 A) -> [alpha/Fe]
response -> survey resolution -> Doppler shift -> survey wavelength grid -> flux-calibration
distortion -> noise. See docs/mock.md for the choices and their limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fitsio
import numpy as np

from specbridge.atomic import atomic_output
from specbridge.io import desi as desi_io
from specbridge.kernels.pipeline import LAMOST_R
from specbridge.labels import LABEL_NAMES, column
from specbridge.mock import physics
from specbridge.mock.emulator import MilesEmulator
from specbridge.mock.miles import load_miles
from specbridge.mock.population import draw_labels
from specbridge.mock.reference import reference_dir, sha256

log = logging.getLogger(__name__)

LAMOST_LOG0, LAMOST_DLOG, LAMOST_NPIX = 3.5682, 1e-4, 3909
SURVEY_CODE = {"lamost": 1, "desi": 2}
LAMOST_OBSID0 = 900_000_000
DESI_TARGETID0 = 39_690_000_000_000_000
GAIA_ID0 = 4_000_000_000_000_000_000 // 1000
DESI_TARGET_MWS_ANY = 1 << 61
MWS_BROAD = 1 << 0
FIBER_AREA_ARCSEC2 = math.pi * 0.75 ** 2


@dataclass
class MockContext:
    """Everything the generators share: the emulator, the LAMOST broadening, the real DESI
    grids (arm -> (npix,)), a pool of real DESI resolution rows (arm -> (m, 11, npix)) and the
    sky per fibre on each DESI arm (arm -> (npix,))."""

    emulator: MilesEmulator
    lamost_wave: np.ndarray
    lamost_broaden: Any
    desi_wave: dict[str, np.ndarray]
    desi_rpool: dict[str, np.ndarray]
    desi_sky: dict[str, np.ndarray]
    miles_teff: np.ndarray
    miles_logg: np.ndarray


def build_context(cfg: dict[str, Any]) -> MockContext:
    """Locate (or fetch) the reference data, fit (or load the cached) emulator, read the DESI
    grids, resolution matrices and sky."""
    shared, cache = cfg.get("reference_data"), Path(cfg["resources_dir"])
    miles_dir = reference_dir("miles", shared, cache)
    lib = load_miles(miles_dir)
    key = sha256(miles_dir / "MILES_params.db")[:12]
    emu_path = cache / f"emulator-{key}.npz"
    if emu_path.exists():
        emu = MilesEmulator.load(emu_path)
    else:
        emu = MilesEmulator.fit(lib)
        emu_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(emu_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, wave=emu.wave, coeffs=emu.coeffs, scatter=emu.scatter,
                     fwhm=emu.fwhm, order=emu.order)
    lam_wave = 10.0 ** (LAMOST_LOG0 + LAMOST_DLOG * np.arange(LAMOST_NPIX))
    desi_dir = reference_dir("desi", shared, cache)
    waves, pools = {}, {}
    for arm in desi_io.ARMS:
        rows = []
        for f in sorted(desi_dir.glob("coadd-*.fits")):
            a = desi_io.read_arm(f, arm, parts=("IVAR", "RESOLUTION"))
            waves[arm] = a.wave
            good = (a.ivar > 0).mean(axis=1) > 0.5
            rows.append(a.resolution[good])
        pools[arm] = np.concatenate(rows)
    sky_dir = reference_dir("sky", shared, cache)
    sky = np.loadtxt(sky_dir / "spec-sky.dat")
    skies = {arm: pixel_average(sky[:, 0], sky[:, 1], w) * FIBER_AREA_ARCSEC2
             for arm, w in waves.items()}
    return MockContext(emu, lam_wave, physics.broadening_matrix(emu.wave, emu.fwhm, LAMOST_R),
                       waves, pools, skies, lib.teff, lib.logg)


def pixel_average(x: np.ndarray, y: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Mean of the finely sampled y(x) over each pixel of a grid given by its ``centres``
    (flux-conserving, so narrow sky lines keep their integrated flux)."""
    edges = np.concatenate([[centres[0] - (centres[1] - centres[0]) / 2],
                            (centres[1:] + centres[:-1]) / 2,
                            [centres[-1] + (centres[-1] - centres[-2]) / 2]])
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])
    integral = np.interp(edges, x, cum)
    return np.diff(integral) / np.diff(edges)


# ---- the population of stars ------------------------------------------------------------------

def draw_stars(ctx: MockContext, survey: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """Labels, radial velocity (km/s), sky position (deg) and IDs of n stars of a survey.

    Deterministic in (seed, survey); LAMOST stars lie in RA 100-140, Dec 20-40 deg and DESI
    stars in RA 180-220, Dec 0-30 deg, uniform on the sphere.
    """
    rng = np.random.default_rng([seed, SURVEY_CODE[survey]])
    stars = draw_labels(rng, n, ctx.miles_teff, ctx.miles_logg)
    halo = stars["component"] == "halo"
    stars["rv"] = np.where(halo, rng.normal(0, 120, n), rng.normal(-5, 35, n))
    ra0, dec0, dec1 = (100.0, 20.0, 40.0) if survey == "lamost" else (180.0, 0.0, 30.0)
    stars["ra"] = ra0 + 40.0 * rng.random(n)
    s0, s1 = np.sin(np.radians(dec0)), np.sin(np.radians(dec1))
    stars["dec"] = np.degrees(np.arcsin(s0 + (s1 - s0) * rng.random(n)))
    stars["gaia_id"] = GAIA_ID0 + SURVEY_CODE[survey] * 10**9 + np.arange(n)
    stars["index"] = np.arange(n)
    if survey == "lamost":
        stars["snr"] = np.clip(np.exp(rng.normal(np.log(40), 0.6, n)), 5, 400)
        stars["id"] = LAMOST_OBSID0 + np.arange(n)
    else:
        stars["mag_r"] = 15.0 + 4.0 * rng.random(n)
        stars["id"] = DESI_TARGETID0 + np.arange(n)
    return stars


def subset(stars: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in stars.items()}


def rest_frame(ctx: MockContext, stars: dict[str, np.ndarray]) -> np.ndarray:
    """(n, npix_miles) normalised rest-frame flux with the [alpha/Fe] response."""
    flux = ctx.emulator.flux(stars["teff"], stars["logg"], stars["feh"])
    return physics.alpha_response(ctx.emulator.wave, flux, stars["feh"], stars["alpha_fe"])


# ---- LAMOST -----------------------------------------------------------------------------------

def observe_lamost(ctx: MockContext, stars: dict[str, np.ndarray], rng: np.random.Generator,
                   ) -> dict[str, np.ndarray]:
    """LAMOST observations of n stars: flux, ivar (n, 3909) float32, andmask (n, 3909) int32,
    snr_band (n, 5) measured S/N in u g r i z."""
    rest = rest_frame(ctx, stars)
    broad = (ctx.lamost_broaden @ rest.T).T
    wave = ctx.emulator.wave
    ext_wave = np.concatenate([wave, np.linspace(wave[-1] + 1.0, 9300.0, 1900)])
    ext = physics.extend_beyond(wave, broad, stars["teff"], ext_wave)
    obs = physics.doppler_resample(ext_wave, ext, stars["rv"], ctx.lamost_wave)
    # blueward of the MILES range (3700-3541 A is covered; nothing needed) and the red extension
    n = obs.shape[0]
    calib = physics.calibration_distortion(ctx.lamost_wave, rng, n, amplitude=0.08, order=3)
    scale = 300.0 * np.exp(rng.normal(0, 0.5, n))  # LAMOST flux units are relative counts
    model = obs * calib * scale[:, None]
    g = (ctx.lamost_wave > 4100) & (ctx.lamost_wave < 5400)
    ref = np.median(model[:, g], axis=1)
    # photon noise scaled so that the g-band median S/N is the star's drawn S/N
    sigma = (ref / stars["snr"])[:, None] * np.sqrt(np.clip(model / ref[:, None], 0.05, None))
    flux = model + sigma * rng.standard_normal(model.shape)
    ivar = 1.0 / sigma ** 2
    andmask = np.zeros(model.shape, dtype=np.int32)
    bad = rng.random(model.shape) < 5e-4  # cosmic rays / bad pixels
    flux[bad] *= 5.0
    ivar[bad] = 0.0
    andmask[bad] = 1 << 2
    bands = [(3500, 4000), (4100, 5400), (5600, 6800), (7000, 8200), (8300, 9000)]
    snr_band = np.column_stack([
        np.median(np.abs(flux[:, (ctx.lamost_wave > a) & (ctx.lamost_wave < b)])
                  * np.sqrt(ivar[:, (ctx.lamost_wave > a) & (ctx.lamost_wave < b)]), axis=1)
        for a, b in bands])
    return {"flux": flux.astype(np.float32), "ivar": ivar.astype(np.float32),
            "andmask": andmask, "snr_band": snr_band}


def _lamost_header(star: dict[str, Any], snr_band: np.ndarray, filename: str,
                   layout: str) -> list[dict[str, Any]]:
    z = star["rv"] / physics.C_KMS
    cards = [
        ("FILENAME", filename, ""), ("OBSID", int(star["id"]), "unique observation ID"),
        ("AUTHOR", "specbridge mock", ""), ("DATA_V", "LAMOST MOCK", "specbridge mock survey"),
        ("TELESCOP", "LAMOST", ""), ("RA", float(star["ra"]), "[deg]"),
        ("DEC", float(star["dec"]), "[deg]"), ("RA_OBS", float(star["ra"]), "[deg]"),
        ("DEC_OBS", float(star["dec"]), "[deg]"), ("OBJTYPE", "Star", ""),
        ("CLASS", "STAR", ""), ("SUBCLASS", "", ""), ("HELIO", True, ""),
        ("VACUUM", True, "vacuum wavelengths"), ("NWORDER", 2, ""),
        ("WFITTYPE", "LOG-LINEAR", ""), ("COEFF0", LAMOST_LOG0, "log10 lambda of pixel 0"),
        ("COEFF1", LAMOST_DLOG, "log10 lambda step"), ("Z", float(z), "pipeline redshift"),
        ("Z_ERR", 5.0 / physics.C_KMS, ""),
    ]
    for band, v in zip("UGRIZ", snr_band, strict=True):
        cards.append((f"SNR{band}", round(float(v), 2), f"median S/N in {band.lower()}"))
    if layout == "image":
        cards.append(("EXTNAME", "Flux", ""))
    return [{"name": k, "value": v, "comment": c} for k, v, c in cards]


def write_lamost_file(path: Path, layout: str, wave: np.ndarray, flux: np.ndarray,
                      ivar: np.ndarray, andmask: np.ndarray, header: list[dict[str, Any]],
                      ) -> None:
    """One LAMOST spectrum as FITS in the ``image`` (<= DR8) or ``table`` (>= DR9) layout."""
    ormask = andmask.copy()
    with atomic_output(path) as tmp:
        if layout == "image":
            data = np.vstack([flux, ivar, wave.astype(np.float32), andmask.astype(np.float32),
                              ormask.astype(np.float32)]).astype(np.float32)
            fitsio.write(str(tmp), data, header=header, clobber=True)
        else:
            npix = wave.size
            table = np.zeros(1, dtype=[("FLUX", "f4", npix), ("IVAR", "f4", npix),
                                       ("WAVELENGTH", "f4", npix), ("ANDMASK", "i4", npix),
                                       ("ORMASK", "i4", npix), ("NORMALIZATION", "f4", npix)])
            table["FLUX"], table["IVAR"], table["WAVELENGTH"] = flux, ivar, wave
            table["ANDMASK"], table["ORMASK"] = andmask, ormask
            table["NORMALIZATION"] = np.median(flux)
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                f.write(None, header=header)
                f.write(table, extname="COADD")


def lamost_name(obsid: int, layout: str) -> str:
    return f"spec-mock-{obsid}.fits.gz" if layout == "image" else f"{obsid}.fits"


def write_lamost_batch(ctx: MockContext, stars: dict[str, np.ndarray], outdir: Path,
                       table_fraction: float, seed: int, batch: int) -> list[str]:
    """Observe a batch of LAMOST stars and write one file each; returns the paths."""
    rng = np.random.default_rng([seed, SURVEY_CODE["lamost"], 1, batch])
    obs = observe_lamost(ctx, stars, rng)
    # layout by a hash of the ID, so it does not depend on the batching
    layouts = np.where((stars["id"] * 2654435761 % 1000) / 1000.0 < table_fraction,
                       "table", "image")
    paths = []
    wave32 = ctx.lamost_wave
    for i in range(stars["id"].size):
        name = lamost_name(int(stars["id"][i]), layouts[i])
        star = {k: v[i] for k, v in stars.items()}
        hdr = _lamost_header(star, obs["snr_band"][i], name, layouts[i])
        path = outdir / name
        write_lamost_file(path, layouts[i], wave32, obs["flux"][i], obs["ivar"][i],
                          obs["andmask"][i], hdr)
        paths.append(str(path))
    return paths


# ---- DESI -------------------------------------------------------------------------------------

def observe_desi(ctx: MockContext, stars: dict[str, np.ndarray], rng: np.random.Generator,
                 ) -> dict[str, dict[str, np.ndarray]]:
    """DESI coadd observations of n stars: per arm flux, ivar (n, npix) float32, mask int32,
    resolution (n, 11, npix) float32 (the real matrix applied to each spectrum)."""
    rest = rest_frame(ctx, stars)
    wave = ctx.emulator.wave
    ext_wave = np.concatenate([np.linspace(3500.0, wave[0] - 1.0, 40), wave,
                               np.linspace(wave[-1] + 1.0, 9900.0, 2600)])
    ext = physics.extend_beyond(wave, rest, stars["teff"], ext_wave)
    n = rest.shape[0]
    phi = 2.0 * 10 ** (-0.4 * (stars["mag_r"] - 18.0))  # 1e-17 erg/s/cm2/A at the median
    out = {}
    for arm in desi_io.ARMS:
        w = ctx.desi_wave[arm]
        obs = physics.doppler_resample(ext_wave, ext, stars["rv"], w)
        calib = physics.calibration_distortion(w, rng, n, amplitude=0.03, order=2)
        pool = ctx.desi_rpool[arm]
        rdata = pool[rng.integers(0, pool.shape[0], size=n)].astype(np.float64)
        model = physics.apply_resolution(rdata, obs * calib * phi[:, None])
        sky = ctx.desi_sky[arm][None, :]
        # variance of a ~1000 s dark-time coadd: photon noise of source + sky, plus read noise
        var = 0.008 * (np.clip(model, 0, None) + sky) + 0.02
        sigma = np.sqrt(var)
        flux = model + sigma * rng.standard_normal(model.shape)
        ivar = 1.0 / var
        mask = np.zeros(model.shape, dtype=np.int32)
        bad = rng.random(model.shape) < 3e-4
        ivar[bad] = 0.0
        mask[bad] = 1 << 0
        out[arm] = {"flux": flux.astype(np.float32), "ivar": ivar.astype(np.float32),
                    "mask": mask, "resolution": rdata.astype(np.float32)}
    return out


def desi_fibermap(stars: dict[str, np.ndarray], in_catalogue_gaia: np.ndarray) -> np.ndarray:
    """FIBERMAP rows for the stars; REF_ID/REF_CAT carry the Gaia ID where ``in_catalogue_gaia``
    (bool, (n,)) says the star's Gaia ID is published in the FIBERMAP."""
    n = stars["id"].size
    fm = np.zeros(n, dtype=[("TARGETID", "i8"), ("COADD_FIBERSTATUS", "i4"),
                            ("TARGET_RA", "f8"), ("TARGET_DEC", "f8"), ("OBJTYPE", "S3"),
                            ("DESI_TARGET", "i8"), ("MWS_TARGET", "i8"), ("REF_ID", "i8"),
                            ("REF_CAT", "S2"), ("FLUX_R", "f4"), ("HEALPIX", "i4")])
    fm["TARGETID"] = stars["id"]
    fm["TARGET_RA"], fm["TARGET_DEC"] = stars["ra"], stars["dec"]
    fm["OBJTYPE"] = "TGT"
    fm["DESI_TARGET"] = DESI_TARGET_MWS_ANY
    fm["MWS_TARGET"] = MWS_BROAD
    fm["REF_ID"] = np.where(in_catalogue_gaia, stars["gaia_id"], -1)
    fm["REF_CAT"] = np.where(in_catalogue_gaia, "G2", "")
    fm["FLUX_R"] = 10 ** (-0.4 * (stars["mag_r"] - 22.5))
    return fm


def write_desi_file(path: Path, fibermap: np.ndarray, arms: dict[str, dict[str, np.ndarray]],
                    waves: dict[str, np.ndarray], group: int, with_resolution: bool) -> None:
    """A DESI coadd file: FIBERMAP, then B/R/Z WAVELENGTH, FLUX, IVAR, MASK (and RESOLUTION)."""
    fibermap = fibermap.copy()
    fibermap["HEALPIX"] = group
    hdr0 = [{"name": "SPGRP", "value": "mockgroup", "comment": "mock survey file group"},
            {"name": "SPGRPVAL", "value": int(group)},
            {"name": "SURVEY", "value": "mock"}, {"name": "PROGRAM", "value": "mws"}]
    with atomic_output(path) as tmp, fitsio.FITS(str(tmp), "rw", clobber=True) as f:
        f.write(None, header=hdr0)
        f.write(fibermap, extname="FIBERMAP")
        for arm in desi_io.ARMS:
            a = arms[arm]
            f.write(waves[arm].astype(np.float64), extname=f"{arm}_WAVELENGTH",
                    header=[{"name": "BUNIT", "value": "Angstrom"}])
            f.write(a["flux"], extname=f"{arm}_FLUX",
                    header=[{"name": "BUNIT", "value": "10**-17 erg/(s cm2 Angstrom)"}])
            f.write(a["ivar"], extname=f"{arm}_IVAR",
                    header=[{"name": "BUNIT", "value": "10**+34 (s2 cm4 Angstrom2) / erg2"}])
            f.write(a["mask"], extname=f"{arm}_MASK")
            if with_resolution:
                f.write(a["resolution"], extname=f"{arm}_RESOLUTION")


def write_redrock(path: Path, stars: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """A redrock-like redshift file (REDSHIFTS: TARGETID, Z, ZERR, ZWARN, SPECTYPE...)."""
    n = stars["id"].size
    z = np.zeros(n, dtype=[("TARGETID", "i8"), ("Z", "f8"), ("ZERR", "f8"), ("ZWARN", "i8"),
                           ("CHI2", "f8"), ("SPECTYPE", "S6"), ("SUBTYPE", "S20"),
                           ("DELTACHI2", "f8")])
    zerr = 3.0 / physics.C_KMS
    z["TARGETID"] = stars["id"]
    z["Z"] = stars["rv"] / physics.C_KMS + rng.normal(0, zerr, n)
    z["ZERR"], z["SPECTYPE"], z["DELTACHI2"], z["CHI2"] = zerr, "STAR", 1e4, 8000.0
    with atomic_output(path) as tmp, fitsio.FITS(str(tmp), "rw", clobber=True) as f:
        f.write(None)
        f.write(z, extname="REDSHIFTS")


def write_desi_group(ctx: MockContext, stars: dict[str, np.ndarray], outdir: Path, seed: int,
                     group: int, gaia_in_fibermap: np.ndarray, with_resolution: bool,
                     ) -> tuple[str, str]:
    """Observe one group of DESI stars and write its coadd and redrock files."""
    rng = np.random.default_rng([seed, SURVEY_CODE["desi"], 1, group])
    arms = observe_desi(ctx, stars, rng)
    coadd = outdir / f"coadd-mock-{group:05d}.fits"
    redrock = outdir / f"redrock-mock-{group:05d}.fits"
    write_desi_file(coadd, desi_fibermap(stars, gaia_in_fibermap), arms, ctx.desi_wave, group,
                    with_resolution)
    write_redrock(redrock, stars, rng)
    return str(coadd), str(redrock)


# ---- the APOGEE-like label catalogue and the truth table --------------------------------------

def apogee_catalogue(lamost: dict[str, np.ndarray], desi: dict[str, np.ndarray], seed: int,
                     lamost_fraction: float = 0.9, desi_fraction: float = 0.6,
                     n_field: int = 200) -> np.ndarray:
    """An allStar-like table: a random ``lamost_fraction`` of the LAMOST stars and
    ``desi_fraction`` of the DESI stars, plus ``n_field`` stars observed by neither, with
    label errors, reported labels = truth + error draw, and ~3 % ASPCAPFLAG STAR_BAD."""
    rng = np.random.default_rng([seed, 3])
    parts = []
    for stars, frac in ((lamost, lamost_fraction), (desi, desi_fraction)):
        keep = rng.random(stars["id"].size) < frac
        parts.append({k: v[keep] for k, v in stars.items()})
    field = {"teff": rng.uniform(4000, 6500, n_field), "logg": rng.uniform(1, 5, n_field),
             "feh": rng.uniform(-2, 0.4, n_field), "alpha_fe": rng.uniform(0, 0.3, n_field),
             "ra": rng.uniform(0, 90, n_field), "dec": rng.uniform(-20, 60, n_field),
             "gaia_id": GAIA_ID0 + 9 * 10**9 + np.arange(n_field)}
    parts.append(field)
    n = sum(p["teff"].size for p in parts)
    t = np.zeros(n, dtype=[("APOGEE_ID", "S18"), ("RA", "f8"), ("DEC", "f8"),
                           ("GAIAEDR3_SOURCE_ID", "i8"), ("SNR", "f4"), ("TEFF", "f4"),
                           ("TEFF_ERR", "f4"), ("LOGG", "f4"), ("LOGG_ERR", "f4"),
                           ("M_H", "f4"), ("M_H_ERR", "f4"), ("FE_H", "f4"), ("FE_H_ERR", "f4"),
                           ("ALPHA_M", "f4"), ("ALPHA_M_ERR", "f4"), ("ASPCAPFLAG", "i8"),
                           ("STARFLAG", "i8")])
    cat = {k: np.concatenate([p[k] for p in parts]) for k in
           ("teff", "logg", "feh", "alpha_fe", "ra", "dec", "gaia_id")}
    err = {"teff": rng.uniform(30, 80, n), "logg": rng.uniform(0.03, 0.08, n),
           "feh": rng.uniform(0.01, 0.03, n), "alpha_fe": rng.uniform(0.01, 0.03, n)}
    rep = {k: cat[k] + rng.normal(0, 1, n) * err[k] for k in err}
    t["APOGEE_ID"] = [f"2M{i:016d}" for i in range(n)]
    t["RA"] = cat["ra"] + rng.normal(0, 0.1 / 3600, n)  # 0.1 arcsec astrometric scatter
    t["DEC"] = cat["dec"] + rng.normal(0, 0.1 / 3600, n)
    t["GAIAEDR3_SOURCE_ID"] = cat["gaia_id"]
    t["SNR"] = rng.uniform(70, 500, n)
    t["TEFF"], t["TEFF_ERR"] = rep["teff"], err["teff"]
    t["LOGG"], t["LOGG_ERR"] = rep["logg"], err["logg"]
    t["FE_H"], t["FE_H_ERR"] = rep["feh"], err["feh"]
    t["M_H"] = rep["feh"] + 0.75 * rep["alpha_fe"]
    t["M_H_ERR"] = err["feh"]
    # reported [alpha/M] such that ALPHA_M + M_H - FE_H = the reported [alpha/Fe]
    t["ALPHA_M"] = rep["alpha_fe"] - (t["M_H"] - t["FE_H"])
    t["ALPHA_M_ERR"] = err["alpha_fe"]
    t["ASPCAPFLAG"] = np.where(rng.random(n) < 0.03, 1 << 23, 0)
    return t


def truth_table(stars: dict[str, np.ndarray], survey: str) -> np.ndarray:
    n = stars["id"].size
    t = np.zeros(n, dtype=[("SURVEY", "S6"), ("SPECID", "i8"), ("GAIA_ID", "i8"),
                           ("RA", "f8"), ("DEC", "f8"),
                           *[(column(lab), "f4") for lab in LABEL_NAMES], ("RV", "f4"),
                           ("COMPONENT", "S5")])
    t["SURVEY"], t["SPECID"], t["GAIA_ID"] = survey, stars["id"], stars["gaia_id"]
    t["RA"], t["DEC"], t["RV"] = stars["ra"], stars["dec"], stars["rv"]
    for lab in LABEL_NAMES:
        t[column(lab)] = stars[lab]
    t["COMPONENT"] = stars["component"]
    return t


# ---- the whole survey, MPI-parallel over files ------------------------------------------------

def generate(cfg: dict[str, Any], outdir: str | Path, comm: Any = None,
             progress: Callable[[int, int], None] | None = None,
             with_resolution: bool | None = None) -> dict[str, Any]:
    """Generate the mock survey of ``cfg['data']['mock']`` under ``outdir`` (MPI over files).

    Returns, on rank 0, {'lamost': [paths], 'desi': [paths], 'redrock': [paths],
    'labels': path, 'truth': path}; on other ranks the paths that rank wrote.
    """
    from specbridge.parallel.partition import weighted_partition

    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    mock = cfg["data"]["mock"]
    seed = cfg["seed"]
    outdir = Path(outdir)
    if rank == 0:
        ctx = build_context(cfg)  # fits and caches the emulator once
    if comm is not None:
        comm.Barrier()
        if rank != 0:
            ctx = build_context(cfg)  # reads the cache
    # the labelled LAMOST set, then the unlabelled corpus: the same population observed the
    # same way, absent from the label catalogue (the SpecFormer pretrains on both)
    n_lam = mock["n_lamost"] + mock["n_lamost_unlabelled"]
    lamost = draw_stars(ctx, "lamost", n_lam, seed)
    labelled = subset(lamost, np.arange(mock["n_lamost"]))
    desi = draw_stars(ctx, "desi", mock["n_desi"], seed)
    (outdir / "lamost").mkdir(parents=True, exist_ok=True)
    (outdir / "desi").mkdir(parents=True, exist_ok=True)
    if with_resolution is None:
        with_resolution = mock.get("desi_resolution_hdu", True)

    batch = 250
    lam_batches = [(b, np.arange(s, min(s + batch, n_lam)))
                   for b, s in enumerate(range(0, n_lam, batch))]
    per = mock["desi_per_file"]
    desi_groups = [(g, np.arange(s, min(s + per, mock["n_desi"])))
                   for g, s in enumerate(range(0, mock["n_desi"], per))]
    # which DESI stars publish a Gaia ID in the FIBERMAP (80 %)
    gaia_pub = np.random.default_rng([seed, 4]).random(mock["n_desi"]) < 0.8
    jobs = [("lamost", b, idx) for b, idx in lam_batches] + \
           [("desi", g, idx) for g, idx in desi_groups]
    # a DESI spectrum (3 arms, resolution matrices) costs about twice a LAMOST one
    weights = [idx.size * (1.0 if kind == "lamost" else 2.0) for kind, _, idx in jobs]
    mine = weighted_partition(weights, size)[rank]
    written: dict[str, list[str]] = {"lamost": [], "desi": [], "redrock": []}
    for k, j in enumerate(mine):
        kind, b, idx = jobs[j]
        if kind == "lamost":
            written["lamost"] += write_lamost_batch(ctx, subset(lamost, idx), outdir / "lamost",
                                                    mock["lamost_table_fraction"], seed, b)
        else:
            c, r = write_desi_group(ctx, subset(desi, idx), outdir / "desi", seed, b,
                                    gaia_pub[idx], with_resolution)
            written["desi"].append(c)
            written["redrock"].append(r)
        if progress is not None and rank == 0:
            progress(k + 1, len(mine))
    if comm is not None:
        gathered = comm.gather(written, root=0)
        if rank != 0:
            return written
        written = {key: sorted(p for w in gathered for p in w[key]) for key in written}
    labels_path = outdir / "apogee_allstar.fits"
    with atomic_output(labels_path) as tmp:
        fitsio.write(str(tmp), apogee_catalogue(labelled, desi, seed), extname="ALLSTAR",
                     clobber=True)
    truth_path = outdir / "truth.fits"
    with atomic_output(truth_path) as tmp:
        fitsio.write(str(tmp), np.concatenate([truth_table(lamost, "lamost"),
                                               truth_table(desi, "desi")]), extname="TRUTH",
                     clobber=True)
    return {**written, "labels": str(labels_path), "truth": str(truth_path)}
