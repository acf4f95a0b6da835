"""What turns an emulated MILES-resolution spectrum into a survey observation: the [alpha/Fe]
response, broadening to a target resolving power, Doppler shift, the continuum beyond the
MILES range, flux-calibration distortions, and DESI resolution matrices."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse

C_KMS = 299792.458

# Alpha-element features in the MILES range (vacuum Angstrom): centre, half-width, weight.
# Weights: strong, alpha-sensitive features (Mg b, Ca I 4227, Ca II H&K) 1; weaker Ti/Si/Ca/Mg
# lines 0.6. Line opacity scales with the element's abundance, so the optical depth of these
# features is scaled by 10**(weight * delta[alpha/Fe]) (see alpha_response).
ALPHA_FEATURES: tuple[tuple[float, float, float], ...] = (
    (3934.8, 8.0, 1.0),   # Ca II K
    (3969.6, 8.0, 1.0),   # Ca II H
    (3906.5, 2.5, 0.6),   # Si I
    (4227.9, 5.0, 1.0),   # Ca I 4227
    (4445.0, 2.0, 0.6),   # Ti II / Ca I blend
    (4456.0, 2.0, 0.6),   # Ca I
    (4535.0, 3.0, 0.6),   # Ti I / Ti II
    (4572.0, 2.0, 0.6),   # Ti II
    (4703.0, 3.0, 0.6),   # Mg I 4703
    (4982.0, 3.0, 0.6),   # Ti I
    (4992.4, 3.0, 0.6),   # Ti I
    (5170.0, 22.0, 1.0),  # Mg b triplet 5167/5173/5184 and MgH
    (5529.9, 3.0, 0.6),   # Mg I 5528
    (5590.0, 3.0, 0.6),   # Ca I 5588-5590
    (5859.0, 3.0, 0.6),   # Ca I 5857
    (6104.0, 2.5, 0.6),   # Ca I 6102
    (6124.0, 2.5, 0.6),   # Ca I 6122
    (6164.0, 2.5, 0.6),   # Ca I 6162
    (6441.0, 2.5, 0.6),   # Ca I 6439
)


def miles_alpha_trend(feh: np.ndarray) -> np.ndarray:
    """[alpha/Fe] typical of MILES stars at a given [Fe/H] (solar-neighbourhood pattern, as
    measured for MILES by Milone et al. 2011): 0.4 below [Fe/H] = -1, falling linearly to 0 at
    solar. The emulator, fitted to those stars, carries this pattern implicitly."""
    return np.clip(-0.4 * np.asarray(feh), 0.0, 0.4)


def feature_weights(wave: np.ndarray) -> np.ndarray:
    """(npix,) weight of the alpha features at each wavelength (smooth-edged windows)."""
    w = np.zeros_like(wave, dtype=np.float64)
    for centre, half, weight in ALPHA_FEATURES:
        x = np.abs(wave - centre) / half
        w = np.maximum(w, weight * np.clip(1.5 - x, 0.0, 1.0))  # flat core, linear wings
    return w


def pseudo_continuum(wave: np.ndarray, flux: np.ndarray, width_aa: float = 40.0) -> np.ndarray:
    """(n, npix) upper envelope of flux (n, npix): running maximum over ``width_aa``,
    smoothed by a running mean of the same width."""
    step = float(np.median(np.diff(wave)))
    size = max(3, int(round(width_aa / step)) | 1)
    env = ndimage.maximum_filter1d(flux, size=size, axis=1, mode="nearest")
    return ndimage.uniform_filter1d(env, size=size, axis=1, mode="nearest")


def alpha_response(wave: np.ndarray, flux: np.ndarray, feh: np.ndarray,
                   alpha_fe: np.ndarray) -> np.ndarray:
    """Apply [alpha/Fe] to emulated spectra.

    flux: (n, npix) on ``wave`` (npix,); feh, alpha_fe: (n,). Inside the alpha features the
    optical depth tau = -ln(flux / continuum) is scaled by 10**(w * (alpha_fe - trend(feh))),
    w the feature weight; elsewhere flux is unchanged.
    """
    delta = np.asarray(alpha_fe) - miles_alpha_trend(feh)
    w = feature_weights(wave)
    cont = pseudo_continuum(wave, flux)
    tau = -np.log(np.clip(flux / cont, 1e-3, 1.0))
    scale = 10.0 ** (w[None, :] * delta[:, None])
    return cont * np.exp(-tau * scale)


def planck(wave_aa: np.ndarray, teff: np.ndarray) -> np.ndarray:
    """(n, npix) black-body B_lambda (arbitrary units) at wavelengths (npix,) in Angstrom."""
    lam = wave_aa[None, :] * 1e-8  # cm
    x = 1.4387769 / (lam * np.asarray(teff, dtype=np.float64)[:, None])  # hc / (lambda k T)
    return 1.0 / (lam ** 5 * np.expm1(np.minimum(x, 700.0)))


def extend_beyond(wave: np.ndarray, flux: np.ndarray, teff: np.ndarray, wave_out: np.ndarray,
                  match_aa: float = 50.0) -> np.ndarray:
    """Sample flux (n, npix) on ``wave_out``: interpolated inside ``wave``, and beyond its red
    (blue) end a black body at Teff scaled to the median of the last (first) ``match_aa``.
    The extension has no absorption lines: MILES has no information there."""
    out = np.empty((flux.shape[0], wave_out.size))
    for i in range(flux.shape[0]):
        out[i] = np.interp(wave_out, wave, flux[i])
    red = wave_out > wave[-1]
    blue = wave_out < wave[0]
    for sel, ref in ((red, wave >= wave[-1] - match_aa), (blue, wave <= wave[0] + match_aa)):
        if sel.any():
            bb_ref = planck(wave[ref], teff)
            scale = np.median(flux[:, ref], axis=1) / np.median(bb_ref, axis=1)
            out[:, sel] = planck(wave_out[sel], teff) * scale[:, None]
    return out


def broadening_matrix(wave: np.ndarray, fwhm_in: float, resolving_power: float,
                      ) -> sparse.csr_matrix:
    """Sparse (npix, npix) Gaussian convolution that takes spectra of constant FWHM
    ``fwhm_in`` (Angstrom) on ``wave`` to FWHM = lambda / ``resolving_power``; rows where the
    target is already sharper than ``fwhm_in`` are the identity. Rows sum to 1."""
    step = np.gradient(wave)
    fwhm_t = wave / resolving_power
    sigma_pix = np.sqrt(np.clip(fwhm_t ** 2 - fwhm_in ** 2, 0.0, None)) / 2.3548 / step
    half = int(np.ceil(4 * sigma_pix.max())) if sigma_pix.max() > 0 else 0
    n = wave.size
    offsets = np.arange(-half, half + 1)
    rows = np.repeat(np.arange(n), offsets.size)
    cols = rows + np.tile(offsets, n)
    s = np.repeat(np.maximum(sigma_pix, 1e-3), offsets.size)
    vals = np.exp(-0.5 * (np.tile(offsets, n) / s) ** 2)
    keep = (cols >= 0) & (cols < n)
    m = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    norm = np.asarray(m.sum(axis=1)).ravel()
    return sparse.diags(1.0 / norm) @ m


def doppler_resample(wave_rest: np.ndarray, flux: np.ndarray, rv_kms: np.ndarray,
                     wave_obs: np.ndarray) -> np.ndarray:
    """(n, nobs) flux observed at ``wave_obs`` for sources moving at ``rv_kms`` (n,):
    the rest-frame spectrum (n, npix) on ``wave_rest`` sampled at wave_obs / (1 + v/c)."""
    out = np.empty((flux.shape[0], wave_obs.size))
    for i in range(flux.shape[0]):
        out[i] = np.interp(wave_obs / (1.0 + rv_kms[i] / C_KMS), wave_rest, flux[i])
    return out


def calibration_distortion(wave: np.ndarray, rng: np.random.Generator, n: int,
                           amplitude: float, order: int) -> np.ndarray:
    """(n, npix) smooth multiplicative flux-calibration errors exp(sum_k a_k P_k(x)),
    Legendre P_1..P_order over the range, a_k ~ N(0, amplitude)."""
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
    legendre = np.polynomial.legendre.legvander(x, order)[:, 1:]  # (npix, order)
    a = rng.normal(0.0, amplitude, size=(n, order))
    return np.exp(a @ legendre.T)


def apply_resolution(rdata: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Apply DESI band-diagonal resolution matrices.

    rdata: (n, ndiag, npix) as stored in ``*_RESOLUTION`` (desispec convention: diagonal k has
    offset ndiag//2 - k, element (i, i + offset) = rdata[k, i + offset]); flux: (n, npix).
    Returns (n, npix) = R @ flux for each spectrum.
    """
    n, ndiag, npix = rdata.shape
    half = ndiag // 2
    prod = rdata * flux[:, None, :]
    out = np.zeros_like(flux)
    for k in range(ndiag):
        off = half - k
        if off >= 0:
            out[:, : npix - off] += prod[:, k, off:]
        else:
            out[:, -off:] += prod[:, k, : npix + off]
    return out
