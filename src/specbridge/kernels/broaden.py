"""Gaussian broadening with a per-pixel width, inverse variance propagated (Numba)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _broaden_one(flux, ivar, sigma_pix, out_flux, out_ivar):
    n = flux.size
    for i in range(n):
        s = sigma_pix[i]
        if s < 0.05:
            out_flux[i] = flux[i]
            out_ivar[i] = ivar[i]
            continue
        h = int(4.0 * s) + 1
        sw = 0.0
        swf = 0.0
        sw2v = 0.0
        for k in range(max(0, i - h), min(n, i + h + 1)):
            if ivar[k] > 0.0:
                d = (k - i) / s
                w = np.exp(-0.5 * d * d)
                sw += w
                swf += w * flux[k]
                sw2v += w * w / ivar[k]
        if sw > 0.0 and sw2v > 0.0:
            out_flux[i] = swf / sw
            out_ivar[i] = sw * sw / sw2v
        else:
            out_flux[i] = 0.0
            out_ivar[i] = 0.0


@numba.njit(cache=True, parallel=True)
def _broaden_batch(flux, ivar, sigma_pix, out_flux, out_ivar):
    for s in numba.prange(flux.shape[0]):
        _broaden_one(flux[s], ivar[s], sigma_pix[s], out_flux[s], out_ivar[s])


def broaden_gaussian(flux: np.ndarray, ivar: np.ndarray, sigma_pix: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Convolve spectra with a Gaussian whose width varies per pixel.

    flux, ivar: (n, npix); sigma_pix: (n, npix) or (npix,) Gaussian sigma in pixels at each
    output pixel (< 0.05: unchanged). Pixels with ivar <= 0 get no weight; the kernel is
    renormalised over the usable pixels, so flux is conserved where all are usable; ivar is
    propagated as for independent pixels. Returns float64 (flux, ivar).
    """
    f = np.ascontiguousarray(flux, dtype=np.float64)
    iv = np.ascontiguousarray(ivar, dtype=np.float64)
    sig = np.broadcast_to(np.asarray(sigma_pix, dtype=np.float64), f.shape)
    sig = np.ascontiguousarray(sig)
    out_f = np.empty_like(f)
    out_iv = np.empty_like(iv)
    _broaden_batch(f, iv, sig, out_f, out_iv)
    return out_f, out_iv
