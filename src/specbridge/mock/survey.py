"""The labelled mock survey: LAMOST- and DESI-format files of stars with known labels, and an
APOGEE allStar-like label catalogue, written in the real surveys' formats (read back by the
same readers as real files).

Pipeline per star: labels -> MILES emulator (rest frame, vacuum, FWHM 2.5 A) -> the star's own
residual (:mod:`specbridge.mock.residuals`) -> [alpha/Fe] response -> unresolved companion ->
survey resolution (LAMOST: per fibre; DESI: the line-spread function written to the file) ->
Doppler shift -> survey wavelength grid -> extinction and diffuse bands -> flux-calibration
distortion -> noise (DESI: with the bright sky, and a sky-subtraction residual); the files
record the RV with its survey's error. The survey effects: :mod:`specbridge.mock.effects`. A
configurable number of stars is observed by both surveys as one identity. See docs/mock.md
for the choices and their limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fitsio
import numpy as np

from specbridge.atomic import atomic_output
from specbridge.io import desi as desi_io
from specbridge.kernels.pipeline import LAMOST_R
from specbridge.labels import LABEL_NAMES, column
from specbridge.mock import effects, physics
from specbridge.mock.effects import SurveyEffects
from specbridge.mock.emulator import MilesEmulator, crossval_residuals
from specbridge.mock.miles import load_miles
from specbridge.mock.population import PRIORS, draw_labels
from specbridge.mock.reference import reference_dir, sha256
from specbridge.mock.residuals import StarResiduals

log = logging.getLogger(__name__)

LAMOST_LOG0, LAMOST_DLOG, LAMOST_NPIX = 3.5682, 1e-4, 3909
SURVEY_CODE = {"lamost": 1, "desi": 2}
#: SURVEY and PROGRAM of the mock DESI files (headers and names): the MWS main bright program
DESI_SURVEY, DESI_PROGRAM = "main", "bright"
LAMOST_OBSID0 = 900_000_000
DESI_TARGETID0 = 39_690_000_000_000_000
GAIA_ID0 = 4_000_000_000_000_000_000 // 1000
DESI_TARGET_MWS_ANY = 1 << 61
MWS_BROAD = 1 << 0
FIBER_AREA_ARCSEC2 = math.pi * 0.75 ** 2
#: how the DESI mock's line-spread function is made and written (docs/mock.md)
DESI_LSF_MODES = ("miles_floor", "convolved", "legacy")
#: the per-star quantities an overlap star shares between the surveys (its identity)
IDENTITY_KEYS = ("teff", "logg", "feh", "alpha_fe", "component", "rv", "ra", "dec", "gaia_id")
LAMOST_R_RANGE = (1000.0, 2000.0)  # per-fibre resolving power is clipped to this range
#: the per-star survey-effect quantities a star has once (copied to its LAMOST observation)
INTRINSIC_EFFECT_KEYS = ("ebv", "comp_flux", "comp_teff", "comp_logg", "comp_dv")
FLUX_REF_AA = {"lamost": 4750.0, "desi": 5300.0}  # extinction leaves the flux scale here
ASTROMETRIC_SCATTER_ARCSEC = 0.1


@dataclass
class DesiLsf:
    """The line-spread function the DESI mock gives a spectrum for each real resolution row of
    an arm's pool (m rows): ``extra`` (m, npix) sigma (pixels) of the Gaussian applied to the
    MILES-resolution spectrum instead of the real matrix (None: the real matrix is applied),
    ``written`` (m, 11, npix) float32 the resolution data of the resulting line-spread
    function, written to the file."""

    extra: np.ndarray | None
    written: np.ndarray


def desi_lsf(mode: str, rdata: np.ndarray, wave: np.ndarray, fwhm_in: float) -> DesiLsf:
    """The DESI mock's line-spread function for real DESI resolution rows ``rdata``
    (m, 11, npix) on an arm's grid ``wave`` (npix,) Angstrom, for spectra already at
    ``fwhm_in`` (MILES: 2.5 A FWHM).

    ``mode`` = ``miles_floor``: a Gaussian of sqrt(max(sigma_DESI^2 - sigma_MILES^2, 0)) is
    applied, so the spectra reach DESI's width where DESI is broader than MILES and stay at
    MILES' where it is sharper (everywhere for the real matrices: DESI's FWHM is 1.5-1.9 A);
    written: a Gaussian of the resulting width. ``convolved``: the real matrix applied;
    written: the real matrix convolved with MILES' Gaussian. ``legacy``: the real matrix
    applied and written alone (it understates the width: the behaviour before issue #14).
    """
    rdata = np.asarray(rdata, dtype=np.float64)
    if mode == "legacy":
        return DesiLsf(None, rdata.astype(np.float32))
    sigma_in = fwhm_in / physics.FWHM_PER_SIGMA / np.gradient(wave)  # pixels
    if mode == "convolved":
        return DesiLsf(None, physics.convolve_resolution(rdata, sigma_in).astype(np.float32))
    if mode != "miles_floor":
        raise ValueError(f"data.mock.desi_lsf: {mode!r} is not one of {DESI_LSF_MODES}")
    sigma_desi = physics.resolution_sigma_pix(rdata)
    extra = np.sqrt(np.clip(sigma_desi ** 2 - sigma_in[None, :] ** 2, 0.0, None))
    total = np.sqrt(sigma_in[None, :] ** 2 + extra ** 2)
    return DesiLsf(extra, physics.gaussian_resolution(total, rdata.shape[1]))


@dataclass
class MockContext:
    """Everything the generators share: the emulator, the LAMOST broadening at the nominal
    R = 1800, the real DESI grids (arm -> (npix,)), a pool of real DESI resolution rows
    (arm -> (m, 11, npix)), the sky per fibre on each DESI arm (arm -> (npix,)), the
    star-to-star residual model (None: off), how the DESI line-spread function is made (one
    of DESI_LSF_MODES) and what that gives for each pool row (arm -> :class:`DesiLsf`); the
    survey effects switched on, and with the bright sky its continuum per fibre on each DESI
    arm (arm -> (npix,), 1e-17 erg/s/cm^2/A)."""

    emulator: MilesEmulator
    lamost_wave: np.ndarray
    lamost_broaden: Any
    desi_wave: dict[str, np.ndarray]
    desi_rpool: dict[str, np.ndarray]
    desi_sky: dict[str, np.ndarray]
    miles_teff: np.ndarray
    miles_logg: np.ndarray
    residuals: StarResiduals | None = None
    desi_lsf: str = "miles_floor"
    desi_lsfs: dict[str, DesiLsf] | None = None
    effects: SurveyEffects = field(default_factory=SurveyEffects)
    desi_sky_continuum: dict[str, np.ndarray] | None = None


def build_context(cfg: dict[str, Any]) -> MockContext:
    """Locate (or fetch) the reference data, fit (or load the cached) emulator and residual
    model, read the DESI grids, resolution matrices and sky. ``cfg``: the whole configuration
    (``data.mock`` selects the residual model and the DESI line-spread mode)."""
    shared, cache = cfg.get("reference_data"), Path(cfg["resources_dir"])
    mock = cfg.get("data", {}).get("mock", {})
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
    residuals = None
    if mock.get("star_residuals", True):
        # the PCA of the MILES stars' cross-validated residuals, computed once per library
        res_path = cache / f"star-residuals-v1-{key}.npz"
        if res_path.exists():
            residuals = StarResiduals.load(res_path)
        else:
            residuals = StarResiduals.fit(crossval_residuals(lib))
            res_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(res_path) as tmp, open(tmp, "wb") as fh:
                residuals.save(fh)
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
    mode = mock.get("desi_lsf", "miles_floor")
    lsfs = {arm: desi_lsf(mode, pools[arm], waves[arm], emu.fwhm) for arm in desi_io.ARMS}
    eff = SurveyEffects.from_mock(mock)
    continuum = bright_sky(emu, waves, eff.bright_sky) if eff.on("bright_sky") else None
    return MockContext(emu, lam_wave, physics.broadening_matrix(emu.wave, emu.fwhm, LAMOST_R),
                       waves, pools, skies, lib.teff, lib.logg, residuals, mode, lsfs, eff,
                       continuum)


def bright_sky(emu: MilesEmulator, waves: dict[str, np.ndarray], params: dict[str, Any],
               ) -> dict[str, np.ndarray]:
    """The bright-time sky continuum per fibre on each DESI arm (arm -> (npix,),
    1e-17 erg/s/cm^2/A): scattered sunlight (the emulator's solar spectrum, black body beyond
    the MILES range) at ``params``' V surface brightness (:func:`effects.bright_sky_continuum`)."""
    sun = emu.flux(np.array([effects.SOLAR_TEFF]), np.array([effects.SOLAR_LOGG]),
                   np.array([0.0]))
    wide = np.linspace(3500.0, 9900.0, 6401)
    solar = physics.extend_beyond(emu.wave, sun, np.array([effects.SOLAR_TEFF]), wide)[0]
    return {arm: effects.bright_sky_continuum(
        w, solar, wide, params.get("v_mag_arcsec2", 19.5), params.get("blue_exponent", 2.0),
        FIBER_AREA_ARCSEC2) for arm, w in waves.items()}


#: the exposure-time calculator's reference: an r = 18 star (2e-17 erg/s/cm^2/A)
ETC_REF_FLUX = 2.0


def etc_exposure_factor(continuum: dict[str, np.ndarray]) -> float:
    """How much longer a bright-time exposure is than the dark-sky one (>= 1): DESI's
    exposure-time calculator keeps exposing until the survey's effective depth is reached, so
    a reference star (:data:`ETC_REF_FLUX`) keeps its dark-time S/N under the moonlit
    continuum; fainter stars, sky-dominated, lose S/N, brighter ones gain. ``continuum``: arm ->
    (npix,) sky continuum (1e-17 erg/s/cm^2/A); its mean over the B arm (or every arm) sets
    the factor. Variance model as in :func:`observe_desi`: 0.008 (source + sky) + 0.02."""
    sky = float(np.mean(continuum["B"] if "B" in continuum
                        else np.concatenate(list(continuum.values()))))
    dark = 0.008 * ETC_REF_FLUX + 0.02
    return (0.008 * (ETC_REF_FLUX + sky) + 0.02) / dark


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

def draw_stars(ctx: MockContext, survey: str, n: int, seed: int,
               lamost_resolution_spread: float = 0.0, survey_priors: bool = False,
               ) -> dict[str, np.ndarray]:
    """Labels, radial velocity (km/s), sky position (deg) and IDs of n stars of a survey,
    each an array (n,); for LAMOST also the fibre's resolving power ``lamost_r`` (at 5500 A)
    and its ``lamost_tilt`` (:func:`physics.lamost_resolving_power`).

    Deterministic in (seed, survey); LAMOST stars lie in RA 100-140, Dec 20-40 deg and DESI
    stars in RA 180-220, Dec 0-30 deg, uniform on the sphere. The LAMOST fibre resolution:
    R ~ N(1800, spread) clipped to 1000-2000, tilt ~ N(0, spread / 1800) (spread 0: every
    fibre at exactly R = 1800), from a generator of its own so that the other draws do not
    depend on the spread.

    ``survey_priors``: labels from the survey's own prior (:data:`population.PRIORS`), LAMOST
    S/N log-normal about 55 (the bright APOGEE overlap) and DESI r from number counts rising
    as 10^(0.3 r) over 16-19 (MWS-MAIN's range); otherwise one prior for both, LAMOST S/N
    about 40 and DESI r uniform in 15-19.
    """
    rng = np.random.default_rng([seed, SURVEY_CODE[survey]])
    stars = draw_labels(rng, n, ctx.miles_teff, ctx.miles_logg,
                        PRIORS[survey] if survey_priors else None)
    halo = stars["component"] == "halo"
    stars["rv"] = np.where(halo, rng.normal(0, 120, n), rng.normal(-5, 35, n))
    ra0, dec0, dec1 = (100.0, 20.0, 40.0) if survey == "lamost" else (180.0, 0.0, 30.0)
    stars["ra"] = ra0 + 40.0 * rng.random(n)
    s0, s1 = np.sin(np.radians(dec0)), np.sin(np.radians(dec1))
    stars["dec"] = np.degrees(np.arcsin(s0 + (s1 - s0) * rng.random(n)))
    stars["gaia_id"] = GAIA_ID0 + SURVEY_CODE[survey] * 10**9 + np.arange(n)
    stars["index"] = np.arange(n)
    if survey == "lamost":
        median_snr = 55.0 if survey_priors else 40.0
        stars["snr"] = np.clip(np.exp(rng.normal(np.log(median_snr), 0.6, n)), 5, 400)
        stars["id"] = LAMOST_OBSID0 + np.arange(n)
        r_rng = np.random.default_rng([seed, SURVEY_CODE[survey], 8])
        spread = float(lamost_resolution_spread)
        stars["lamost_r"] = np.clip(LAMOST_R + spread * r_rng.standard_normal(n),
                                    *LAMOST_R_RANGE)
        stars["lamost_tilt"] = spread / LAMOST_R * r_rng.standard_normal(n)
    else:
        if survey_priors:  # inverse CDF of counts ~ 10^(0.3 r) on [16, 19]
            lo, hi = 10 ** (0.3 * 16.0), 10 ** (0.3 * 19.0)
            stars["mag_r"] = np.log10(lo + (hi - lo) * rng.random(n)) / 0.3
        else:
            stars["mag_r"] = 15.0 + 4.0 * rng.random(n)
        stars["id"] = DESI_TARGETID0 + np.arange(n)
    return stars


def draw_survey(ctx: MockContext, mock: dict[str, Any], seed: int,
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The LAMOST and DESI stars of the mock ``mock`` (= cfg['data']['mock']): ``n_lamost``
    labelled LAMOST stars followed by ``n_lamost_unlabelled`` more, and ``n_desi`` DESI stars.

    ``n_overlap`` DESI stars (a random choice) are also observed by LAMOST: each replaces a
    random labelled LAMOST star, taking over its identity (IDENTITY_KEYS: labels, component, RV,
    position, Gaia ID) but keeping its own OBSID, S/N and fibre resolution; its LAMOST
    position carries 0.1 arcsec of astrometric scatter. ``overlap`` (bool, (n,)) marks them
    in both. With ``star_residuals``, ``residual`` (n, K) holds each star's residual
    coefficients, drawn from its Gaia ID (so an overlap star has one residual) and
    ``resid_rms`` (n,) their rms over 4000-5600 A. The survey effects that are per star
    (:func:`draw_star_effects`) are added. Deterministic in ``seed``.
    """
    eff = SurveyEffects.from_mock(mock)
    priors = eff.on("survey_priors")
    # the labelled LAMOST stars first, then the unlabelled corpus (n_lamost_unlabelled: the
    # same population observed the same way, left out of the label catalogue)
    lamost = draw_stars(ctx, "lamost", mock["n_lamost"] + mock.get("n_lamost_unlabelled", 0),
                        seed, mock.get("lamost_resolution_spread", 0.0), priors)
    desi = draw_stars(ctx, "desi", mock["n_desi"], seed, survey_priors=priors)
    n_ov = min(int(mock.get("n_overlap", 0)), mock["n_lamost"], mock["n_desi"])
    rng = np.random.default_rng([seed, 5])
    d_idx = np.sort(rng.choice(mock["n_desi"], size=n_ov, replace=False))
    l_idx = np.sort(rng.choice(mock["n_lamost"], size=n_ov, replace=False))
    for key in IDENTITY_KEYS:
        lamost[key][l_idx] = desi[key][d_idx]
    scatter = ASTROMETRIC_SCATTER_ARCSEC / 3600.0
    lamost["dec"][l_idx] += rng.normal(0.0, scatter, n_ov)
    lamost["ra"][l_idx] += rng.normal(0.0, scatter, n_ov) / np.cos(
        np.radians(lamost["dec"][l_idx]))
    for stars, idx in ((lamost, l_idx), (desi, d_idx)):
        stars["overlap"] = np.zeros(stars["id"].size, bool)
        stars["overlap"][idx] = True
    if ctx.residuals is not None and mock.get("star_residuals", True):
        k = int(mock.get("star_residual_components", 20))
        w = ctx.residuals.wave
        grid = (w >= 4000.0) & (w <= 5600.0)
        for stars in (lamost, desi):
            stars["residual"] = ctx.residuals.draw(stars["gaia_id"], stars["teff"],
                                                   stars["logg"], stars["feh"], seed, k)
            r = stars["residual"] @ ctx.residuals.components[:k, grid]
            stars["resid_rms"] = np.sqrt(np.mean(r ** 2, axis=1))
    draw_star_effects(lamost, desi, l_idx, d_idx, eff, seed)
    return lamost, desi


def lamost_apparent_mag(snr: np.ndarray) -> np.ndarray:
    """(n,) rough g magnitude of LAMOST stars of g-band S/N ``snr`` (n,): g = 15.5 at S/N 40,
    S/N growing as flux^0.75 (between the sky- and the source-limited regimes)."""
    return 15.5 - 2.5 / 0.75 * np.log10(np.asarray(snr) / 40.0)


def draw_star_effects(lamost: dict[str, np.ndarray], desi: dict[str, np.ndarray],
                      l_idx: np.ndarray, d_idx: np.ndarray, eff: SurveyEffects, seed: int,
                      ) -> None:
    """Add the per-star survey effects to the star tables in place, each (n,): ``ebv``
    (extinction on), ``comp_*`` (binaries on: :func:`effects.draw_binaries`), and
    ``rv_recorded``, ``rv_err`` (km/s; RV errors on). What is the star's own (E(B-V), the
    companion) is copied from DESI to its LAMOST observation for the overlap stars
    (``l_idx``, ``d_idx``); the RV errors are each survey's."""
    if eff.on("extinction"):
        lamost["ebv"] = effects.draw_ebv(lamost, lamost_apparent_mag(lamost["snr"]), seed,
                                         eff.extinction)
        desi["ebv"] = effects.draw_ebv(desi, desi["mag_r"], seed, eff.extinction)
    if eff.on("binaries"):
        for stars in (lamost, desi):
            stars.update(effects.draw_binaries(stars, seed, eff.binaries))
    for key in INTRINSIC_EFFECT_KEYS:
        if key in desi:
            lamost[key][l_idx] = desi[key][d_idx]
    if eff.on("rv_errors"):
        p = eff.rv_errors
        for stars, survey in ((lamost, "lamost"), (desi, "desi")):
            rng = np.random.default_rng([seed, SURVEY_CODE[survey], 12])
            sigma = float(p.get(f"{survey}_kms", 5.0 if survey == "lamost" else 1.5))
            frac = float(p.get(f"{survey}_outlier_fraction", 0.0))
            err = effects.draw_rv_errors(stars["rv"].size, rng, sigma, frac,
                                         float(p.get(f"{survey}_outlier_kms", 0.0)))
            stars["rv_recorded"] = stars["rv"] + err
            stars["rv_err"] = np.full(stars["rv"].size, sigma)


def subset(stars: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The stars ``idx`` (index array or mask) of a star table (every array's first axis)."""
    return {k: v[idx] for k, v in stars.items()}


def rest_frame(ctx: MockContext, stars: dict[str, np.ndarray]) -> np.ndarray:
    """(n, npix_miles) normalised rest-frame flux on ``ctx.emulator.wave``: the emulator at
    the labels, times exp(the star's residual) where ``stars`` has ``residual`` coefficients
    (n, K) and the context a residual model, with the [alpha/Fe] response; plus, where
    ``stars`` has companions (``comp_flux`` > 0), the companion (:func:`add_companions`)."""
    log_flux = ctx.emulator.log_flux(stars["teff"], stars["logg"], stars["feh"])
    if "residual" in stars and ctx.residuals is not None:
        log_flux = log_flux + ctx.residuals.log_residual(stars["residual"])
    flux = physics.alpha_response(ctx.emulator.wave, np.exp(log_flux), stars["feh"],
                                  stars["alpha_fe"])
    if "comp_flux" in stars and np.any(stars["comp_flux"] > 0):
        flux = add_companions(ctx, stars, flux)
    return flux


def add_companions(ctx: MockContext, stars: dict[str, np.ndarray], flux: np.ndarray,
                   ) -> np.ndarray:
    """(n, npix_miles) rest-frame ``flux`` (n, npix_miles) of the primaries with their
    unresolved companions: (primary + k companion) / (1 + k), k = ``comp_flux`` (the flux
    ratio at 5000-5600 A, where both emulated spectra have median 1), the companion the
    emulator at (``comp_teff``, ``comp_logg``, the primary's [Fe/H] and [alpha/Fe]), shifted
    by ``comp_dv`` km/s; no residual of its own. Single stars (k = 0) are unchanged."""
    b = np.flatnonzero(stars["comp_flux"] > 0)
    wave = ctx.emulator.wave
    comp = physics.alpha_response(
        wave, ctx.emulator.flux(stars["comp_teff"][b], stars["comp_logg"][b],
                                stars["feh"][b]), stars["feh"][b], stars["alpha_fe"][b])
    comp = physics.doppler_resample(wave, comp, stars["comp_dv"][b], wave)
    k = stars["comp_flux"][b][:, None]
    out = flux.copy()
    out[b] = (flux[b] + k * comp) / (1.0 + k)
    return out


def lamost_lsf(ctx: MockContext, stars: dict[str, np.ndarray], rest: np.ndarray) -> np.ndarray:
    """(n, npix_miles) rest-frame spectra ``rest`` broadened from MILES' FWHM 2.5 A to each
    fibre's FWHM = lambda / R(lambda) (``lamost_r``, ``lamost_tilt`` of ``stars``; absent or
    all at the nominal 1800: one shared sparse kernel). Nothing is sharpened: where
    lambda / R < 2.5 A the spectrum stays at MILES' resolution."""
    if "lamost_r" not in stars or (np.all(stars["lamost_r"] == LAMOST_R)
                                   and np.all(stars["lamost_tilt"] == 0.0)):
        return (ctx.lamost_broaden @ rest.T).T
    wave = ctx.emulator.wave
    r = physics.lamost_resolving_power(wave, stars["lamost_r"], stars["lamost_tilt"],
                                       LAMOST_R_RANGE)
    return physics.gaussian_broaden(rest, physics.broadening_sigma_pix(wave, ctx.emulator.fwhm,
                                                                       r))


# ---- LAMOST -----------------------------------------------------------------------------------

def observe_lamost(ctx: MockContext, stars: dict[str, np.ndarray], rng: np.random.Generator,
                   ) -> dict[str, np.ndarray]:
    """LAMOST observations of n stars: flux, ivar (n, 3909) float32, andmask (n, 3909) int32,
    snr_band (n, 5) measured S/N in u g r i z. ``stars``: labels, ``rv`` (km/s), ``snr``, and
    optionally ``lamost_r``/``lamost_tilt`` (default: R = 1800), ``residual``, companions
    (``comp_*``) and ``ebv``; each (n,) (``residual`` (n, K)). With
    ``lamost_flux_calibration`` on, the calibration distortion is
    :func:`effects.lamost_calibration` (drawn from a generator spawned from ``rng``, so the
    noise is the same as without it)."""
    rest = rest_frame(ctx, stars)
    broad = lamost_lsf(ctx, stars, rest)
    wave = ctx.emulator.wave
    ext_wave = np.concatenate([wave, np.linspace(wave[-1] + 1.0, 9300.0, 1900)])
    ext = physics.extend_beyond(wave, broad, stars["teff"], ext_wave)
    obs = physics.doppler_resample(ext_wave, ext, stars["rv"], ctx.lamost_wave)
    # blueward of the MILES range (3700-3541 A is covered; nothing needed) and the red extension
    n = obs.shape[0]
    eff_rng = rng.spawn(1)[0]  # the survey effects' draws: the stream of rng is unchanged
    calib = physics.calibration_distortion(ctx.lamost_wave, rng, n, amplitude=0.08, order=3)
    if ctx.effects.on("lamost_flux_calibration"):
        p = ctx.effects.lamost_flux_calibration
        calib = effects.lamost_calibration(
            ctx.lamost_wave, eff_rng, n, p.get("amplitude", 0.10),
            p.get("wiggle_amplitude", 0.02), tuple(p.get("wiggle_scale_aa", (200.0, 500.0))))
    if "ebv" in stars:
        obs = obs * effects.interstellar(ctx.lamost_wave, stars["ebv"], ctx.effects.extinction,
                                         ctx.lamost_wave / LAMOST_R, FLUX_REF_AA["lamost"])
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
    z = star.get("rv_recorded", star["rv"]) / physics.C_KMS  # the pipeline's redshift
    z_err = float(star.get("rv_err", 5.0)) / physics.C_KMS
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
        ("Z_ERR", z_err, ""),
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
    """File name of a LAMOST mock spectrum: gzipped in the image layout."""
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
    resolution (n, 11, npix) float32 (the line-spread function the spectrum has, for the
    real resolution row drawn for it: :func:`desi_lsf`). ``stars``: labels, ``rv`` (km/s),
    ``mag_r`` and optionally ``residual``, companions (``comp_*``) and ``ebv``. With the
    bright sky on (``ctx.desi_sky_continuum``), the sky continuum adds photon noise and the
    sky-subtraction residual is added to the flux (drawn from a generator spawned from
    ``rng``, so the noise draws are the same as without it)."""
    rest = rest_frame(ctx, stars)
    wave = ctx.emulator.wave
    ext_wave = np.concatenate([np.linspace(3500.0, wave[0] - 1.0, 40), wave,
                               np.linspace(wave[-1] + 1.0, 9900.0, 2600)])
    ext = physics.extend_beyond(wave, rest, stars["teff"], ext_wave)
    n = rest.shape[0]
    phi = 2.0 * 10 ** (-0.4 * (stars["mag_r"] - 18.0))  # 1e-17 erg/s/cm2/A at the median
    eff_rng = rng.spawn(1)[0]  # the survey effects' draws: the stream of rng is unchanged
    out = {}
    for arm in desi_io.ARMS:
        w = ctx.desi_wave[arm]
        obs = physics.doppler_resample(ext_wave, ext, stars["rv"], w)
        if "ebv" in stars:
            obs = obs * effects.interstellar(w, stars["ebv"], ctx.effects.extinction,
                                             ctx.emulator.fwhm, FLUX_REF_AA["desi"])
        calib = physics.calibration_distortion(w, rng, n, amplitude=0.03, order=2)
        pool = ctx.desi_rpool[arm]
        row = rng.integers(0, pool.shape[0], size=n)  # the real resolution row of each star
        lsf = ctx.desi_lsfs[arm]
        if lsf.extra is None:
            model = physics.apply_resolution(pool[row].astype(np.float64),
                                             obs * calib * phi[:, None])
        else:
            model = physics.gaussian_broaden(obs * calib * phi[:, None], lsf.extra[row])
        sky = ctx.desi_sky[arm][None, :]
        exposure = 1.0
        if ctx.desi_sky_continuum is not None:  # bright time: the moonlit continuum too
            sky = sky + ctx.desi_sky_continuum[arm][None, :]
            exposure = etc_exposure_factor(ctx.desi_sky_continuum)
        # variance of a ~1000 s coadd: photon noise of source + sky, plus read noise; a longer
        # exposure (bright time) divides it
        var = (0.008 * (np.clip(model, 0, None) + sky) + 0.02) / exposure
        sigma = np.sqrt(var)
        flux = model + sigma * rng.standard_normal(model.shape)
        if ctx.desi_sky_continuum is not None:
            p = ctx.effects.bright_sky
            flux = flux + effects.sky_subtraction_residual(
                w, sky[0], eff_rng, n, p.get("subtraction_residual", 0.015),
                p.get("line_shift_aa", 0.02))
        ivar = 1.0 / var
        mask = np.zeros(model.shape, dtype=np.int32)
        bad = rng.random(model.shape) < 3e-4
        ivar[bad] = 0.0
        mask[bad] = 1 << 0
        out[arm] = {"flux": flux.astype(np.float32), "ivar": ivar.astype(np.float32),
                    "mask": mask, "resolution": lsf.written[row]}
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
            {"name": "SURVEY", "value": DESI_SURVEY}, {"name": "PROGRAM", "value": DESI_PROGRAM}]
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
    """A redrock-like redshift file (REDSHIFTS: TARGETID, Z, ZERR, ZWARN, SPECTYPE...): Z the
    recorded RV (``rv_recorded``, RV errors on) or the true RV plus N(0, 3 km/s) from
    ``rng`` (off: the mock before the survey effects)."""
    n = stars["id"].size
    z = np.zeros(n, dtype=[("TARGETID", "i8"), ("Z", "f8"), ("ZERR", "f8"), ("ZWARN", "i8"),
                           ("CHI2", "f8"), ("SPECTYPE", "S6"), ("SUBTYPE", "S20"),
                           ("DELTACHI2", "f8")])
    zerr = 3.0 / physics.C_KMS
    z["TARGETID"] = stars["id"]
    z["Z"] = stars["rv"] / physics.C_KMS + rng.normal(0, zerr, n)
    if "rv_recorded" in stars:
        z["Z"] = stars["rv_recorded"] / physics.C_KMS
        zerr = stars["rv_err"] / physics.C_KMS
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
    coadd = outdir / f"coadd-{DESI_SURVEY}-{DESI_PROGRAM}-{group}.fits"  # as desispec names
    redrock = outdir / f"redrock-{DESI_SURVEY}-{DESI_PROGRAM}-{group}.fits"
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
    label errors, reported labels = truth + error draw, and ~3 % ASPCAPFLAG STAR_BAD.

    Stars marked ``overlap`` (seen by both surveys) are all in it, once: one APOGEE_ID, one
    Gaia ID and the DESI position (their LAMOST copies are not added again)."""
    rng = np.random.default_rng([seed, 3])
    parts = []
    for stars, frac, survey in ((lamost, lamost_fraction, "lamost"),
                                (desi, desi_fraction, "desi")):
        keep = rng.random(stars["id"].size) < frac
        if "overlap" in stars:
            keep = keep & ~stars["overlap"] if survey == "lamost" else keep | stars["overlap"]
        parts.append({k: stars[k][keep] for k in
                      ("teff", "logg", "feh", "alpha_fe", "ra", "dec", "gaia_id")})
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
    """One row per spectrum of a survey: SURVEY, SPECID (OBSID / TARGETID), GAIA_ID (one per
    star: an overlap star has the same in both surveys), RA, DEC (deg, as in the file), the
    true labels, RV (km/s), COMPONENT, OVERLAP (1: observed by both surveys), LAMOST_R (the
    fibre's resolving power at 5500 A; NaN for DESI), RESID_RMS (rms of the star's
    residual in ln flux over 4000-5600 A; 0 without residuals), EBV (mag; 0 without
    extinction), COMP_FLUX and COMP_TEFF (the unresolved companion's flux ratio at 5000-5600 A
    and Teff; 0: single or binaries off) and RV_RECORDED (km/s, the RV the file's redshift
    says; the true RV without RV errors)."""
    n = stars["id"].size
    t = np.zeros(n, dtype=[("SURVEY", "S6"), ("SPECID", "i8"), ("GAIA_ID", "i8"),
                           ("RA", "f8"), ("DEC", "f8"),
                           *[(column(lab), "f4") for lab in LABEL_NAMES], ("RV", "f4"),
                           ("COMPONENT", "S5"), ("OVERLAP", "i1"), ("LAMOST_R", "f4"),
                           ("RESID_RMS", "f4"), ("EBV", "f4"), ("COMP_FLUX", "f4"),
                           ("COMP_TEFF", "f4"), ("RV_RECORDED", "f4")])
    t["SURVEY"], t["SPECID"], t["GAIA_ID"] = survey, stars["id"], stars["gaia_id"]
    t["RA"], t["DEC"], t["RV"] = stars["ra"], stars["dec"], stars["rv"]
    for lab in LABEL_NAMES:
        t[column(lab)] = stars[lab]
    t["COMPONENT"] = stars["component"]
    t["OVERLAP"] = stars.get("overlap", np.zeros(n, bool))
    t["LAMOST_R"] = stars.get("lamost_r", np.full(n, np.nan))
    t["RESID_RMS"] = stars.get("resid_rms", np.zeros(n))
    t["EBV"] = stars.get("ebv", np.zeros(n))
    t["COMP_FLUX"] = stars.get("comp_flux", np.zeros(n))
    t["COMP_TEFF"] = stars.get("comp_teff", np.zeros(n))
    t["RV_RECORDED"] = stars.get("rv_recorded", stars["rv"])
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
    lamost, desi = draw_survey(ctx, mock, seed)
    n_lam = lamost["id"].size
    labelled = subset(lamost, np.arange(mock["n_lamost"]))
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
