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


# ---- line-spread functions: what was applied is what a file says -------------------------------

FWHM_PER_SIGMA = 2.3548200450309493


def gaussian_broaden(flux: np.ndarray, sigma_pix: np.ndarray, block: int = 256) -> np.ndarray:
    """Convolve spectra with Gaussians whose width varies per spectrum and per pixel.

    flux: (n, npix); sigma_pix: (n, npix) or (npix,) Gaussian sigma in pixels at each output
    pixel. Row convention, as :func:`broadening_matrix`: out[i, p] = sum_k w f[i, p + k] /
    sum_k w with w = exp(-k^2 / (2 sigma[i, p]^2)) for |k| <= ceil(4 max sigma) (the maximum
    over the ``block`` of pixels around p), so a constant spectrum stays constant; beyond the
    ends the end pixels are repeated. Pixels with sigma < 0.05 are unchanged. Returns
    (n, npix) float64. Vectorised over spectra: one pass per offset k and block of pixels,
    the weights built by the recurrence q^(k^2) = q^((k-1)^2) q^(2k-1) (no exp per offset).
    """
    f = np.asarray(flux, dtype=np.float64)
    sig = np.broadcast_to(np.asarray(sigma_pix, dtype=np.float64), f.shape)
    out = f.copy()
    if not sig.size or float(sig.max()) < 0.05:
        return out
    npix = f.shape[1]
    hmax = int(np.ceil(4.0 * float(sig.max())))
    padded = np.pad(f, ((0, 0), (hmax, hmax)), mode="edge")
    for a in range(0, npix, block):
        b = min(npix, a + block)
        s = sig[:, a:b]
        smax = float(s.max())
        if smax < 0.05:
            continue
        h = int(np.ceil(4.0 * smax))
        q = np.where(s < 0.05, 0.0, np.exp(-0.5 / np.maximum(s, 0.05) ** 2))
        acc = f[:, a:b].copy()
        norm = np.ones_like(acc)
        w = np.ones_like(acc)
        step = q.copy()  # q^(2k-1), starting at k = 1
        q2 = q * q
        for k in range(1, h + 1):
            w *= step
            step *= q2
            acc += w * (padded[:, hmax + a + k: hmax + b + k]
                        + padded[:, hmax + a - k: hmax + b - k])
            norm += 2.0 * w
        out[:, a:b] = acc / norm
    return out


def lamost_resolving_power(wave: np.ndarray, r_fibre: np.ndarray, tilt: np.ndarray,
                           r_range: tuple[float, float] = (1000.0, 2000.0)) -> np.ndarray:
    """(n, npix) resolving power of n LAMOST fibres at ``wave`` (npix,) Angstrom:
    R(lambda) = r_fibre (1 + tilt (lambda - 5500 A) / 4000 A), clipped to ``r_range``.
    r_fibre, tilt: (n,) (R at 5500 A; fractional change of R per 4000 A)."""
    x = (np.asarray(wave, dtype=np.float64)[None, :] - 5500.0) / 4000.0
    r = np.asarray(r_fibre, dtype=np.float64)[:, None] * (1.0 + np.asarray(tilt)[:, None] * x)
    return np.clip(r, *r_range)


def broadening_sigma_pix(wave: np.ndarray, fwhm_in: float, resolving_power: np.ndarray,
                         ) -> np.ndarray:
    """Gaussian sigma (pixels of ``wave``) that takes spectra of constant FWHM ``fwhm_in``
    (Angstrom) to FWHM = lambda / R: sqrt(max((lambda / R)^2 - fwhm_in^2, 0)) / 2.3548 / step.
    wave: (npix,) Angstrom; resolving_power: (npix,) or (n, npix). Returns its shape; 0 where
    the target is sharper than ``fwhm_in`` (nothing can sharpen the input)."""
    step = np.gradient(np.asarray(wave, dtype=np.float64))
    fwhm_t = wave / np.asarray(resolving_power, dtype=np.float64)
    return np.sqrt(np.clip(fwhm_t ** 2 - fwhm_in ** 2, 0.0, None)) / FWHM_PER_SIGMA / step


def _rows_from_rdata(rdata: np.ndarray) -> np.ndarray:
    """(n, ndiag, npix) row-offset form of DESI resolution data: rows[:, j, i] = R[i, i + o_j],
    o_j = j - ndiag // 2 (zero where i + o_j is off the grid). rdata as in
    :func:`apply_resolution`."""
    n, ndiag, npix = rdata.shape
    half = ndiag // 2
    rows = np.zeros(rdata.shape, dtype=np.float64)
    for j in range(ndiag):
        off = j - half
        k = half - off
        if off >= 0:
            rows[:, j, : npix - off] = rdata[:, k, off:]
        else:
            rows[:, j, -off:] = rdata[:, k, : npix + off]
    return rows


def _rdata_from_rows(rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rows_from_rdata`: (n, ndiag, npix) desispec-convention data."""
    n, ndiag, npix = rows.shape
    half = ndiag // 2
    rdata = np.zeros(rows.shape, dtype=np.float64)
    for j in range(ndiag):
        off = j - half
        k = half - off
        if off >= 0:
            rdata[:, k, off:] = rows[:, j, : npix - off]
        else:
            rdata[:, k, : npix + off] = rows[:, j, -off:]
    return rdata


def _diagonals(ndiag: int, npix: int):
    """For each row offset o = j - ndiag // 2: (j, k = the rdata diagonal, the slice of rows
    i with i + o on the grid, the slice of columns i + o)."""
    half = ndiag // 2
    for j in range(ndiag):
        off = j - half
        rows = slice(0, npix - off) if off >= 0 else slice(-off, npix)
        cols = slice(off, npix) if off >= 0 else slice(0, npix + off)
        yield j, half - off, off, rows, cols


def resolution_sigma_pix(rdata: np.ndarray) -> np.ndarray:
    """(n, npix) Gaussian-equivalent sigma (pixels) of each row of DESI resolution data
    (n, ndiag, npix): the square root of the row kernel's second central moment (negative
    elements count as 0)."""
    n, ndiag, npix = rdata.shape
    norm = np.zeros((n, npix))
    m1 = np.zeros((n, npix))
    m2 = np.zeros((n, npix))
    for _, k, off, rows, cols in _diagonals(ndiag, npix):
        v = np.clip(rdata[:, k, cols], 0.0, None)
        norm[:, rows] += v
        m1[:, rows] += off * v
        m2[:, rows] += off * off * v
    norm = np.maximum(norm, 1e-30)
    return np.sqrt(np.clip(m2 / norm - (m1 / norm) ** 2, 0.0, None))


def gaussian_resolution(sigma_pix: np.ndarray, ndiag: int = 11) -> np.ndarray:
    """DESI resolution data (n, ndiag, npix) float32, desispec convention, whose row i is a
    Gaussian of sigma ``sigma_pix[:, i]`` (pixels; (n, npix)) sampled at integer offsets,
    truncated to the band and normalised to 1 over the pixels on the grid."""
    sig = np.maximum(np.asarray(sigma_pix, dtype=np.float64), 1e-3)
    n, npix = sig.shape
    a = -0.5 / sig ** 2
    norm = np.zeros((n, npix))
    for _, _, off, rows, _ in _diagonals(ndiag, npix):
        norm[:, rows] += np.exp(a[:, rows] * off * off)
    rdata = np.zeros((n, ndiag, npix), dtype=np.float32)
    for _, k, off, rows, cols in _diagonals(ndiag, npix):
        rdata[:, k, cols] = np.exp(a[:, rows] * off * off) / norm[:, rows]
    return rdata


def convolve_resolution(rdata: np.ndarray, sigma_pix: float | np.ndarray) -> np.ndarray:
    """Resolution data (n, ndiag, npix) of R G: the DESI matrix R after a Gaussian G of sigma
    ``sigma_pix`` (pixels; scalar or (npix,)), the effective line-spread function of a
    spectrum that already had resolution G when R was applied. Each row is the discrete
    convolution of R's row with G's, truncated to the band and renormalised to R's row sum."""
    rows = _rows_from_rdata(np.asarray(rdata, dtype=np.float64))
    n, ndiag, npix = rows.shape
    half = ndiag // 2
    sig = np.broadcast_to(np.asarray(sigma_pix, dtype=np.float64), (npix,))
    hg = int(np.ceil(4.0 * sig.max()))
    dg = np.arange(-hg, hg + 1, dtype=np.float64)
    g = np.exp(-0.5 * (dg[:, None] / sig[None, :]) ** 2)
    g /= g.sum(axis=0, keepdims=True)  # (2 hg + 1, npix), G's row at each pixel
    out = np.zeros_like(rows)
    for j in range(ndiag):  # R's offset o1 = j - half, then G's offset d: o = o1 + d
        for m, d in enumerate(range(-hg, hg + 1)):
            t = j + d
            if 0 <= t < ndiag:
                out[:, t, :] += rows[:, j, :] * g[m][None, :]
    col = np.arange(npix)[None, :] + (np.arange(ndiag) - half)[:, None]
    out *= ((col >= 0) & (col < npix))[None]
    out *= rows.sum(axis=1, keepdims=True) / np.maximum(out.sum(axis=1, keepdims=True), 1e-30)
    return _rdata_from_rows(out)
