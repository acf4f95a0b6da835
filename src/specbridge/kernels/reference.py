"""Plain NumPy references of the Numba kernels. Used only by the tests: they are written for
clarity (dense overlap matrices, explicit loops), independently of the kernels' algorithms."""

from __future__ import annotations

import numpy as np

from specbridge.flags import pixel_flag


def resample_reference(in_edges, flux, ivar, mask, z, out_edges, min_coverage=0.5):
    """Same contract as kernels.resample_rest_frame, via a dense overlap matrix per spectrum."""
    n, nin = flux.shape
    nout = out_edges.size - 1
    of, oi = np.zeros((n, nout)), np.zeros((n, nout))
    om = np.zeros((n, nout), dtype=np.int32)
    mask = np.zeros((n, nin), np.int32) if mask is None else mask
    for s in range(n):
        zs = z[s] if np.isfinite(z[s]) else 0.0
        e = in_edges / (1.0 + zs)
        lo = np.maximum(out_edges[:-1, None], e[None, :-1])
        hi = np.minimum(out_edges[1:, None], e[None, 1:])
        ov = np.clip(hi - lo, 0.0, None)  # (nout, nin)
        usable = (ivar[s] > 0) & np.isfinite(flux[s]) & np.isfinite(ivar[s])
        w = ov * usable[None, :]
        sw = w.sum(1)
        f = np.where(usable, flux[s], 0.0)
        var = np.where(usable, 1.0 / np.where(usable, ivar[s], 1.0), 0.0)
        width = np.diff(out_edges)
        ok = (sw > min_coverage * width) & ((w ** 2 @ var) > 0)
        of[s] = np.where(ok, (w @ f) / np.where(ok, sw, 1.0), 0.0)
        oi[s] = np.where(ok, sw ** 2 / np.where(ok, w ** 2 @ var, 1.0), 0.0)
        touched = ov > 0
        om[s] |= np.where((touched & ~usable[None, :]).any(1), pixel_flag("PARTIAL"), 0)
        om[s] |= np.where((touched & (mask[s] != 0)[None, :]).any(1),
                          pixel_flag("INPUT_MASK"), 0)
        om[s] |= np.where(ok, 0, pixel_flag("NO_DATA"))
    return of, oi, om


def running_median_reference(flux, good, half):
    """Median of the usable values within +-half of each pixel (NaN if none)."""
    n = flux.size
    out = np.full(n, np.nan)
    for i in range(n):
        v = flux[max(0, i - half):i + half + 1][good[max(0, i - half):i + half + 1]]
        if v.size:
            out[i] = np.median(v)
    return out


def continuum_reference(flux, ivar, degree=5, median_window=7, iterations=10, lower=1.0,
                        upper=3.0, stride=4):
    """Same algorithm as kernels.continuum_normalise for one spectrum (n,), with NumPy's
    weighted polyfit on the block means; returns the continuum (n,)."""
    n = flux.size
    good = (ivar > 0) & np.isfinite(flux)
    sm = running_median_reference(flux, good, median_window // 2)
    x = 2.0 * np.arange(n) / (n - 1) - 1.0
    nb = -(-n // stride)
    blocks = np.arange(n) // stride
    cnt = np.bincount(blocks[good], minlength=nb).astype(float)
    tot = np.bincount(blocks[good], weights=sm[good], minlength=nb)
    yb = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), 0.0)
    xb = np.array([x[blocks == b].mean() for b in range(nb)])
    w = cnt.copy()
    coef = None
    for _ in range(iterations):
        if w.sum() < 2 * (degree + 1):
            break
        a = np.vander(xb, degree + 1, increasing=True)
        coef = np.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * yb))
        model = a @ coef
        sigma = np.sqrt(np.sum(w * (yb - model) ** 2) / w.sum())
        d = yb - model
        new = np.where((d > -lower * sigma) & (d < upper * sigma), cnt, 0.0)
        if np.array_equal(new, w):
            break
        w = new
    return np.polynomial.polynomial.polyval(x, coef)


def broaden_reference(flux, ivar, sigma_pix):
    """Same contract as kernels.broaden_gaussian for one spectrum (n,) via a dense kernel."""
    n = flux.size
    i = np.arange(n)
    s = np.maximum(sigma_pix, 1e-9)
    k = np.exp(-0.5 * ((i[None, :] - i[:, None]) / s[:, None]) ** 2)
    k[np.abs(i[None, :] - i[:, None]) > (4.0 * s + 1).astype(int)[:, None]] = 0.0
    usable = ivar > 0
    w = k * usable[None, :]
    sw = w.sum(1)
    var = np.where(usable, 1.0 / np.where(usable, ivar, 1.0), 0.0)
    f = np.where(sw > 0, (w @ np.where(usable, flux, 0.0)) / np.where(sw > 0, sw, 1), 0.0)
    iv = np.where(sw > 0, sw ** 2 / np.where(sw > 0, w ** 2 @ var, 1), 0.0)
    keep = sigma_pix < 0.05
    return np.where(keep, flux, f), np.where(keep, ivar, iv)
