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


@numba.njit(cache=True, nogil=True)
def _shared_weights(sigma_pix):
    """Kernel weights for one sigma row: (npix, 2h+1) weights and the half width h."""
    n = sigma_pix.size
    h = int(4.0 * sigma_pix.max()) + 1
    w = np.zeros((n, 2 * h + 1))
    for i in range(n):
        s = sigma_pix[i]
        if s < 0.05:
            w[i, h] = 1.0
            continue
        hi = int(4.0 * s) + 1
        for d in range(-hi, hi + 1):
            x = d / s
            w[i, h + d] = np.exp(-0.5 * x * x)
    return w, h


@numba.njit(cache=True, parallel=True)
def _broaden_batch_shared(flux, ivar, weights, h, out_flux, out_ivar):
    n = flux.shape[1]
    for s in numba.prange(flux.shape[0]):
        f = flux[s]
        iv = ivar[s]
        for i in range(n):
            sw = 0.0
            swf = 0.0
            sw2v = 0.0
            for k in range(max(0, i - h), min(n, i + h + 1)):
                w = weights[i, k - i + h]
                if w != 0.0 and iv[k] > 0.0:
                    sw += w
                    swf += w * f[k]
                    sw2v += w * w / iv[k]
            if sw > 0.0 and sw2v > 0.0:
                out_flux[s, i] = swf / sw
                out_ivar[s, i] = sw * sw / sw2v
            else:
                out_flux[s, i] = 0.0
                out_ivar[s, i] = 0.0


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
    if np.ndim(sigma_pix) == 1:
        # one sigma row for every spectrum: the kernel weights are computed once
        weights, h = _shared_weights(np.ascontiguousarray(sigma_pix, dtype=np.float64))
        out_f = np.empty_like(f)
        out_iv = np.empty_like(iv)
        _broaden_batch_shared(f, iv, weights, h, out_f, out_iv)
        return out_f, out_iv
    sig = np.broadcast_to(np.asarray(sigma_pix, dtype=np.float64), f.shape)
    sig = np.ascontiguousarray(sig)
    out_f = np.empty_like(f)
    out_iv = np.empty_like(iv)
    _broaden_batch(f, iv, sig, out_f, out_iv)
    return out_f, out_iv
