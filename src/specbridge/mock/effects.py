"""Survey effects of the mock (issue #14), each switched on or off in ``data.mock``: DESI
bright-time sky and sky-subtraction residuals, LAMOST flux-calibration distortions,
interstellar extinction with diffuse bands, radial-velocity errors in the recorded redshifts,
unresolved binaries, and per-survey label and S/N distributions (:mod:`population`).

What belongs to a *star* (its extinction, its companion) is drawn from a generator keyed by
the star's Gaia ID, or copied from its DESI twin, so a star observed by both surveys has it
once; what belongs to an *observation* (sky, calibration, redshift error, noise) is drawn per
survey. Every effect draws from generators of its own, so switching one on changes nothing
else. Models, amplitudes and references: docs/mock.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specbridge.mock import physics

#: Johnson V = 0 in f_lambda, 1e-17 erg/s/cm^2/A (Bessell et al. 1998: 3.63e-9 erg/s/cm^2/A)
V_ZERO_FLAMBDA = 3.63e8
V_BAND = (5050.0, 5950.0)  # Angstrom: where a V surface brightness is matched
SOLAR_TEFF, SOLAR_LOGG = 5772.0, 4.438
#: diffuse interstellar bands (vacuum centre A, EW per mag E(B-V) in A, FWHM A, profile):
#: 4430 (Herbig 1975, ApJ 196, 129: ~2 A/mag; Lorentzian of FWHM ~20 A, Snow et al. 2002,
#: ApJ 573, 670), 5780 and 5797 (Friedman et al. 2011, ApJ 727, 33: W(5780) ~ 0.5 E(B-V),
#: W(5797) ~ 0.17 E(B-V); FWHM 2.1 and 0.9 A)
DIBS: tuple[tuple[float, float, float, str], ...] = (
    (4429.4, 2.0, 20.0, "lorentz"),
    (5782.1, 0.50, 2.1, "gauss"),
    (5798.7, 0.17, 0.9, "gauss"),
)
MS_RADIUS_EXPONENT = 0.8  # main-sequence R ~ M^0.8 (Rsun, Msun)
MS_TEFF_EXPONENT = 0.6  # main sequence: L ~ M^4, so Teff ~ M^((4 - 2 * 0.8) / 4) = M^0.6
TEFF_MIN = 3800.0  # the emulator's domain


@dataclass
class SurveyEffects:
    """Which survey effects are on, and their parameters: one dict per effect as in
    ``data.mock`` (see the schema); an effect absent from the mock's config is off (the
    schema's defaults turn every one on)."""

    bright_sky: dict[str, Any] = field(default_factory=dict)
    lamost_flux_calibration: dict[str, Any] = field(default_factory=dict)
    extinction: dict[str, Any] = field(default_factory=dict)
    rv_errors: dict[str, Any] = field(default_factory=dict)
    binaries: dict[str, Any] = field(default_factory=dict)
    survey_priors: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mock(cls, mock: dict[str, Any]) -> SurveyEffects:
        """The effects of ``mock`` (= cfg['data']['mock']); each kept only if enabled."""
        kw = {}
        for name in EFFECT_NAMES:
            sub = mock.get(name) or {}
            kw[name] = dict(sub) if sub.get("enabled", False) else {}
        return cls(**kw)

    def on(self, name: str) -> bool:
        """Whether effect ``name`` (one of EFFECT_NAMES) is switched on."""
        return bool(getattr(self, name))


EFFECT_NAMES = ("bright_sky", "lamost_flux_calibration", "extinction", "rv_errors",
                "binaries", "survey_priors")


def star_rng(seed: int, stream: int, key: int) -> np.random.Generator:
    """A generator for one star (``key``: its int64 Gaia ID) and one effect (``stream``)."""
    return np.random.default_rng([seed, stream, int(key) & 0x7FFF_FFFF_FFFF_FFFF])


# ---- extinction -------------------------------------------------------------------------------

def ccm89(wave_aa: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """(npix,) A_lambda / A_V of Cardelli, Clayton & Mathis (1989, ApJ 345, 245) at
    ``wave_aa`` (npix,) Angstrom: the infrared (0.3-1.1 / micron) and optical (1.1-3.3 /
    micron) parts; beyond 3.3 / micron (bluer than 3030 A) the optical form is extended."""
    x = 1e4 / np.asarray(wave_aa, dtype=np.float64)
    a, b = np.empty_like(x), np.empty_like(x)
    ir = x < 1.1
    a[ir], b[ir] = 0.574 * x[ir] ** 1.61, -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699,
                         1.0], y)
    b[~ir] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338,
                         0.0], y)
    return a + b / r_v


def galactic_latitude(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n,) Galactic latitude b (deg) of ICRS positions (n,) deg (north Galactic pole at
    RA 192.85948, Dec 27.12825)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra_p, dec_p = np.radians(192.85948), np.radians(27.12825)
    sin_b = np.sin(dec) * np.sin(dec_p) + np.cos(dec) * np.cos(dec_p) * np.cos(ra - ra_p)
    return np.degrees(np.arcsin(np.clip(sin_b, -1.0, 1.0)))


def absolute_magnitude(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """(n,) rough absolute (bolometric ~ V) magnitude of stars of one solar mass at
    (Teff K, log g) (n,): L = R^2 (Teff / 5772 K)^4 with R^2 = g_sun / g."""
    lum = 10.0 ** (SOLAR_LOGG - np.asarray(logg)) * (np.asarray(teff) / SOLAR_TEFF) ** 4
    return 4.74 - 2.5 * np.log10(lum)


def dust_ebv(b_deg: np.ndarray, dist_pc: np.ndarray, a_v_per_kpc: float,
             scale_height_pc: float, r_v: float) -> np.ndarray:
    """(n,) E(B-V) (mag) to distance ``dist_pc`` (n,) at latitude ``b_deg`` (n,) through a
    dust disc of density exp(-|z| / h) with A_V = ``a_v_per_kpc`` per kpc in the plane (the
    Sun in the mid-plane): A_V = a0 h / sin|b| (1 - exp(-d sin|b| / h))."""
    sin_b = np.maximum(np.abs(np.sin(np.radians(b_deg))), 1e-3)
    h_kpc = scale_height_pc / 1e3
    a_v = a_v_per_kpc * h_kpc / sin_b * -np.expm1(-np.asarray(dist_pc) / 1e3 * sin_b / h_kpc)
    return a_v / r_v


def draw_ebv(stars: dict[str, np.ndarray], apparent_mag: np.ndarray, seed: int,
             params: dict[str, Any]) -> np.ndarray:
    """(n,) E(B-V) of n stars: the dust disc (:func:`dust_ebv`) to the photometric distance
    (``apparent_mag`` (n,) against :func:`absolute_magnitude`, capped at 30 kpc) along the
    star's line of sight, times a patchiness factor exp(N(0, ``patchiness``)) drawn from the
    star's Gaia ID."""
    dist = np.minimum(10.0 ** ((apparent_mag - absolute_magnitude(stars["teff"],
                                                                   stars["logg"]) + 5) / 5),
                      3e4)
    ebv = dust_ebv(galactic_latitude(stars["ra"], stars["dec"]), dist,
                   params.get("a_v_per_kpc", 1.0), params.get("scale_height_pc", 125.0),
                   params.get("r_v", 3.1))
    patch = np.array([star_rng(seed, 21, k).standard_normal() for k in stars["gaia_id"]])
    return ebv * np.exp(params.get("patchiness", 0.3) * np.clip(patch, -2.5, 2.5))


def extinction_factor(wave: np.ndarray, ebv: np.ndarray, r_v: float,
                      ref_aa: float | None = None) -> np.ndarray:
    """(n, npix) flux transmission 10^(-0.4 A_lambda) at ``wave`` (npix,) A for ``ebv`` (n,),
    relative to ``ref_aa`` when given (the band an apparent magnitude was measured in, so
    that magnitude stays what it is)."""
    curve = ccm89(wave, r_v)
    if ref_aa is not None:
        curve = curve - ccm89(np.array([ref_aa]), r_v)[0]
    return 10.0 ** (-0.4 * (np.asarray(ebv) * r_v)[:, None] * curve[None, :])


def dib_factor(wave: np.ndarray, ebv: np.ndarray, lsf_fwhm: np.ndarray | float,
               bands: tuple[tuple[float, float, float, str], ...] = DIBS) -> np.ndarray:
    """(n, npix) transmission of the diffuse interstellar bands ``bands`` at ``wave`` (npix,)
    A for ``ebv`` (n,) mag, each band an optical depth of equivalent width EW/E(B-V) x E(B-V)
    (weak-line limit) seen through a Gaussian line-spread function of FWHM ``lsf_fwhm`` (A;
    scalar or (npix,)): Gaussian bands add widths in quadrature; the Lorentzian 4430 band
    (20 A, far broader than any LSF here) keeps its profile, truncated at +-10 FWHM."""
    wave = np.asarray(wave, dtype=np.float64)
    lsf = np.broadcast_to(np.asarray(lsf_fwhm, dtype=np.float64), wave.shape)
    tau = np.zeros((np.size(ebv), wave.size))
    for centre, ew_per_ebv, fwhm, shape in bands:
        near = np.abs(wave - centre) < 10.0 * fwhm + 5.0 * float(lsf.max())
        if not near.any():
            continue
        dx = wave[near] - centre
        if shape == "lorentz":
            hw = fwhm / 2.0
            prof = hw / np.pi / (dx ** 2 + hw ** 2)
        else:
            sig = np.sqrt(fwhm ** 2 + lsf[near] ** 2) / physics.FWHM_PER_SIGMA
            prof = np.exp(-0.5 * (dx / sig) ** 2) / (np.sqrt(2 * np.pi) * sig)
        tau[:, near] += (ew_per_ebv * np.asarray(ebv))[:, None] * prof[None, :]
    return np.exp(-tau)


def interstellar(wave: np.ndarray, ebv: np.ndarray, params: dict[str, Any],
                 lsf_fwhm: np.ndarray | float, ref_aa: float | None = None) -> np.ndarray:
    """(n, npix) the interstellar transmission of n stars on an observed grid ``wave``
    (npix,): extinction (relative to ``ref_aa``) times the diffuse bands (if ``dibs``)."""
    r_v = params.get("r_v", 3.1)
    out = extinction_factor(wave, ebv, r_v, ref_aa)
    if params.get("dibs", True):
        out *= dib_factor(wave, ebv, lsf_fwhm)
    return out


# ---- binaries ---------------------------------------------------------------------------------

def draw_binaries(stars: dict[str, np.ndarray], seed: int, params: dict[str, Any],
                  ) -> dict[str, np.ndarray]:
    """Unresolved companions of n stars, each (n,): ``comp_flux`` (companion / primary flux
    at 5000-5600 A; 0 for single stars), ``comp_teff`` (K), ``comp_logg``, ``comp_dv``
    (km/s, the companion's velocity relative to the primary).

    A ``fraction`` of stars (drawn from their Gaia ID) has a main-sequence companion of
    mass ratio q ~ U(q_min, 1) to a primary of M1 = (Teff / 5772 K)^(1 / 0.6) Msun for
    dwarfs (log g >= 3.5) and 1 Msun for giants: M2 = q M1, Teff2 = 5772 M2^0.6 (at least
    3800 K, at most the primary's), R2 = M2^0.8, log g2 = 4.438 + log M2 - 2 log R2, the
    primary's [Fe/H]; the flux ratio is (R2 / R1)^2 B(5300 A, Teff2) / B(5300 A, Teff1) with
    R1^2 = M1 g_sun / g1; dv ~ N(0, ``rv_sigma_kms``)."""
    n = stars["teff"].size
    u = np.empty((n, 3))
    for i, key in enumerate(stars["gaia_id"]):
        g = star_rng(seed, 23, key)
        u[i, :2], u[i, 2] = g.random(2), g.standard_normal()
    teff1, logg1 = np.asarray(stars["teff"]), np.asarray(stars["logg"])
    binary = u[:, 0] < params.get("fraction", 0.15)
    q_min = params.get("q_min", 0.5)
    m1 = np.where(logg1 >= 3.5, (teff1 / SOLAR_TEFF) ** (1.0 / MS_TEFF_EXPONENT), 1.0)
    m2 = m1 * (q_min + (1.0 - q_min) * u[:, 1])
    teff2 = np.clip(SOLAR_TEFF * m2 ** MS_TEFF_EXPONENT, TEFF_MIN, np.maximum(teff1, TEFF_MIN))
    r2 = m2 ** MS_RADIUS_EXPONENT
    logg2 = SOLAR_LOGG + np.log10(m2) - 2.0 * np.log10(r2)
    r1_sq = m1 * 10.0 ** (SOLAR_LOGG - logg1)
    bb = physics.planck(np.array([5300.0]), np.concatenate([teff2, teff1]))[:, 0]
    ratio = r2 ** 2 / r1_sq * bb[:n] / bb[n:]
    dv = params.get("rv_sigma_kms", 20.0) * u[:, 2]
    return {"comp_flux": np.where(binary, ratio, 0.0), "comp_teff": np.where(binary, teff2, 0.0),
            "comp_logg": np.where(binary, logg2, 0.0), "comp_dv": np.where(binary, dv, 0.0)}


# ---- radial-velocity errors -------------------------------------------------------------------

def draw_rv_errors(n: int, rng: np.random.Generator, sigma_kms: float,
                   outlier_fraction: float = 0.0, outlier_kms: float = 0.0) -> np.ndarray:
    """(n,) errors (km/s) of a survey's recorded radial velocities: N(0, ``sigma_kms``), and
    for an ``outlier_fraction`` of them N(0, ``outlier_kms``) instead."""
    err = rng.normal(0.0, sigma_kms, n)
    out = rng.random(n) < outlier_fraction
    err[out] = rng.normal(0.0, outlier_kms, int(out.sum()))
    return err


# ---- DESI bright-time sky ---------------------------------------------------------------------

def bright_sky_continuum(wave: np.ndarray, solar: np.ndarray, solar_wave: np.ndarray,
                         v_mag_arcsec2: float, blue_exponent: float,
                         fibre_area_arcsec2: float) -> np.ndarray:
    """(npix,) scattered-moonlight sky continuum per fibre (1e-17 erg/s/cm^2/A) on a DESI grid
    ``wave`` (npix,) A: the solar spectrum ``solar`` (sampled on ``solar_wave``), reddened by
    nothing and made bluer by (lambda / 5500 A)^-``blue_exponent`` (Rayleigh and aerosol
    scattering; Krisciunas & Schaefer 1991), scaled so that its mean over the V band is a
    surface brightness of ``v_mag_arcsec2`` mag/arcsec^2 times the fibre's area."""
    s = np.interp(wave, solar_wave, solar) * (wave / 5500.0) ** (-blue_exponent)
    ref = (solar_wave >= V_BAND[0]) & (solar_wave <= V_BAND[1])
    s_ref = np.mean(solar[ref] * (solar_wave[ref] / 5500.0) ** (-blue_exponent))
    level = V_ZERO_FLAMBDA * 10.0 ** (-0.4 * v_mag_arcsec2) * fibre_area_arcsec2
    return s * level / s_ref


def sky_subtraction_residual(wave: np.ndarray, sky: np.ndarray, rng: np.random.Generator,
                             n: int, fraction: float, shift_aa: float) -> np.ndarray:
    """(n, npix) what sky subtraction leaves in n fibres' flux: a scale error of the sky
    model, a ~ N(0, ``fraction``) per fibre, times the sky (npix,), plus a wavelength error
    of the sky model, N(0, ``shift_aa``) A per fibre, times the sky's gradient (the P Cygni-like
    residuals at sky lines)."""
    scale = rng.normal(0.0, fraction, n)
    shift = rng.normal(0.0, shift_aa, n)
    grad = np.gradient(sky, wave)
    return scale[:, None] * sky[None, :] + shift[:, None] * grad[None, :]


# ---- LAMOST flux calibration ------------------------------------------------------------------

def lamost_calibration(wave: np.ndarray, rng: np.random.Generator, n: int,
                       amplitude: float, wiggle_amplitude: float,
                       wiggle_scale_aa: tuple[float, float], n_wiggles: int = 4,
                       order: int = 4) -> np.ndarray:
    """(n, npix) multiplicative LAMOST relative flux-calibration errors on ``wave`` (npix,) A:
    exp(smooth + wiggles). smooth: Legendre P1..P``order`` over the range with coefficients
    scaled so that its expected rms is ``amplitude``; wiggles: ``n_wiggles`` sinusoids of
    periods uniform in ``wiggle_scale_aa`` (A) and random phases whose sum has expected rms
    ``wiggle_amplitude`` (what a degree-5 continuum does not fully follow)."""
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
    leg = np.polynomial.legendre.legvander(x, order)[:, 1:]  # (npix, order)
    var_unit = np.sum(1.0 / (2 * np.arange(1, order + 1) + 1))  # mean P_k^2 over [-1, 1]
    a = rng.normal(0.0, amplitude / np.sqrt(var_unit), size=(n, order))
    periods = rng.uniform(*wiggle_scale_aa, size=(n, n_wiggles))
    phases = rng.uniform(0.0, 2 * np.pi, size=(n, n_wiggles))
    amp = wiggle_amplitude * np.sqrt(2.0 / n_wiggles)
    wig = amp * np.sin(2 * np.pi * wave[None, None, :] / periods[:, :, None]
                       + phases[:, :, None]).sum(axis=1)
    return np.exp(a @ leg.T + wig)
