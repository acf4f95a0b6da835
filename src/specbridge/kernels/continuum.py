"""Continuum normalisation by a robust upper-envelope polynomial fit (Numba).

Per spectrum (in the spirit of the SpecCLIP group's LAMOST normalisation, docs/design.md):
1. a running median of the usable pixels (window ``median_window``) suppresses noise spikes;
2. a polynomial of degree ``degree`` in x = 2 (i / (n - 1)) - 1 is fitted to it by least
   squares, up to ``iterations`` times, on blocks of ``stride`` pixels (the mean of the
   smoothed usable pixels of each block, weighted by their number: the continuum is smooth on
   that scale, and the fit costs ``stride`` times less). After each fit the blocks more than
   ``lower`` sigma below it (absorption) or ``upper`` sigma above it (spikes) are left out of
   the next fit, sigma being the rms of the kept residuals, so the fit rises to the upper
   envelope; the loop ends early once the kept set no longer changes (further fits would be
   identical);
3. flux / continuum, ivar * continuum^2.
Deterministic: no random numbers, a fixed rule for the iterations.
"""

from __future__ import annotations

import numba
import numpy as np

from specbridge.flags import pixel_flag

CONTINUUM_BAD = pixel_flag("CONTINUUM_BAD")
MAX_DEGREE = 12


@numba.njit(cache=True, nogil=True, inline="always")
def _median7(a0, a1, a2, a3, a4, a5, a6):
    """Median of seven values by a branch-free min/max network (Paeth's opt_med7)."""
    a0, a5 = min(a0, a5), max(a0, a5)
    a0, a3 = min(a0, a3), max(a0, a3)
    a1, a6 = min(a1, a6), max(a1, a6)
    a2, a4 = min(a2, a4), max(a2, a4)
    a0, a1 = min(a0, a1), max(a0, a1)
    a3, a5 = min(a3, a5), max(a3, a5)
    a2, a6 = min(a2, a6), max(a2, a6)
    a2, a3 = min(a2, a3), max(a2, a3)
    a3, a6 = min(a3, a6), max(a3, a6)
    a4, a5 = min(a4, a5), max(a4, a5)
    a1, a4 = min(a1, a4), max(a1, a4)
    a1, a3 = min(a1, a3), max(a1, a3)
    a3, a4 = min(a3, a4), max(a3, a4)
    return a3


@numba.njit(cache=True, nogil=True)
def _running_median(flux, good, half, out):
    """Median of the usable pixels within +-half of each pixel (NaN if none)."""
    n = flux.size
    buf = np.empty(2 * half + 1)
    run = 0  # number of consecutive usable pixels ending at the window's right edge
    for i in range(n):
        if half == 3 and 3 <= i < n - 3:
            # fast path: the whole window usable
            if run == 0:
                for k in range(i - 3, i + 4):
                    run = run + 1 if good[k] else 0
            elif good[i + 3]:
                run += 1
            else:
                run = 0
            if run >= 7:
                out[i] = _median7(flux[i - 3], flux[i - 2], flux[i - 1], flux[i],
                                  flux[i + 1], flux[i + 2], flux[i + 3])
                continue
        m = 0
        for k in range(max(0, i - half), min(n, i + half + 1)):
            if good[k]:
                v = flux[k]
                p = m
                while p > 0 and buf[p - 1] > v:
                    buf[p] = buf[p - 1]
                    p -= 1
                buf[p] = v
                m += 1
        if m == 0:
            out[i] = np.nan
        elif m % 2 == 1:
            out[i] = buf[m // 2]
        else:
            out[i] = 0.5 * (buf[m // 2 - 1] + buf[m // 2])


@numba.njit(cache=True, nogil=True)
def _solve(a, b, n):
    """Solve a x = b (n x n, in place) by Gaussian elimination with partial pivoting."""
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[p, c]):
                p = r
        if a[p, c] == 0.0:
            return False
        if p != c:
            for k in range(n):
                a[c, k], a[p, k] = a[p, k], a[c, k]
            b[c], b[p] = b[p], b[c]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            for k in range(c, n):
                a[r, k] -= f * a[c, k]
            b[r] -= f * b[c]
    for c in range(n - 1, -1, -1):
        s = b[c]
        for k in range(c + 1, n):
            s -= a[c, k] * b[k]
        b[c] = s / a[c, c]
    return True


@numba.njit(cache=True, nogil=True, fastmath=True)
def _continuum_one(flux, ivar, bpowers, stride, half, iterations, lower, upper, cont):
    """bpowers: (2 nc - 1, nblock) powers of the block centres' x; cont (n,) receives the
    continuum."""
    n = flux.size
    nc = (bpowers.shape[0] + 1) // 2
    nb = bpowers.shape[1]
    good = np.empty(n, dtype=np.bool_)
    ngood = 0
    for i in range(n):
        good[i] = ivar[i] > 0.0 and np.isfinite(flux[i])
        ngood += good[i]
    if ngood < 2 * nc:
        for i in range(n):
            cont[i] = np.nan
        return
    sm = np.empty(n)
    _running_median(flux, good, half, sm)
    # blocks of `stride` pixels: mean of the smoothed usable pixels, weighted by their count
    yb = np.zeros(nb)
    nbk = np.zeros(nb)
    for i in range(n):
        if good[i]:
            b = i // stride
            yb[b] += sm[i]
            nbk[b] += 1.0
    for b in range(nb):
        if nbk[b] > 0:
            yb[b] /= nbk[b]
    w = nbk.copy()
    coef = np.zeros(nc)
    moments = np.zeros(2 * nc - 1)
    rhs_acc = np.zeros(nc)
    a = np.empty((nc, nc))
    rhs = np.empty(nc)
    model = np.empty(nb)
    # normal-equation sums over the kept blocks; later iterations update them with the blocks
    # whose weight changed, instead of summing all blocks again
    for b in range(nb):
        wb = w[b]
        if wb != 0.0:
            for k in range(2 * nc - 1):
                moments[k] += wb * bpowers[k, b]
            for k in range(nc):
                rhs_acc[k] += wb * yb[b] * bpowers[k, b]
    nuse = 0.0
    for b in range(nb):
        nuse += w[b]
    for _ in range(iterations):
        if nuse < 2 * nc:
            break
        for r in range(nc):
            for c in range(nc):
                a[r, c] = moments[r + c]
            rhs[r] = rhs_acc[r]
        if not _solve(a, rhs, nc):
            break
        coef[:] = rhs
        ss = 0.0
        for b in range(nb):
            v = coef[nc - 1]
            for k in range(nc - 2, -1, -1):
                v = v * bpowers[1, b] + coef[k]
            model[b] = v
            d = yb[b] - v
            ss += w[b] * d * d
        sigma = np.sqrt(ss / nuse)
        changed = False
        for b in range(nb):
            d = yb[b] - model[b]
            keep = nbk[b] if (d > -lower * sigma and d < upper * sigma) else 0.0
            dw = keep - w[b]
            if dw != 0.0:
                changed = True
                w[b] = keep
                nuse += dw
                for k in range(2 * nc - 1):
                    moments[k] += dw * bpowers[k, b]
                for k in range(nc):
                    rhs_acc[k] += dw * yb[b] * bpowers[k, b]
        if not changed:
            break  # the next fit would be identical: stopping here changes nothing
    for i in range(n):
        x = 2.0 * i / (n - 1) - 1.0
        v = coef[nc - 1]
        for k in range(nc - 2, -1, -1):
            v = v * x + coef[k]
        cont[i] = v


@numba.njit(cache=True, parallel=True)
def _continuum_batch(flux, ivar, mask, bpowers, stride, half, iterations, lower, upper, cont):
    for s in numba.prange(flux.shape[0]):
        _continuum_one(flux[s], ivar[s], bpowers, stride, half, iterations, lower, upper,
                       cont[s])
        for i in range(flux.shape[1]):
            c = cont[s, i]
            if c > 0.0 and np.isfinite(c):
                flux[s, i] = flux[s, i] / c
                ivar[s, i] = ivar[s, i] * c * c
            else:
                flux[s, i] = 0.0
                ivar[s, i] = 0.0
                mask[s, i] |= CONTINUUM_BAD


def continuum_normalise(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray,
                        degree: int = 5, median_window: int = 7, iterations: int = 10,
                        lower: float = 1.0, upper: float = 3.0, stride: int = 4,
                        inplace: bool = False,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Divide spectra by their upper-envelope continuum (module docstring).

    flux, ivar: (n, npix) on one grid; mask: (n, npix) int pixel bits. Returns new arrays
    (flux / cont, ivar * cont^2, mask | CONTINUUM_BAD where cont <= 0, cont), all (n, npix);
    flux and ivar float64. Where a spectrum has too few usable pixels the continuum is NaN and
    the pixels get ivar 0 and CONTINUUM_BAD. ``inplace=True`` overwrites flux, ivar and mask
    when they already are C-contiguous float64/float64/int32 (saves three copies).
    """
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be in 0..{MAX_DEGREE}")
    copy = not inplace
    f = np.array(flux, dtype=np.float64, order="C", copy=copy)
    iv = np.array(ivar, dtype=np.float64, order="C", copy=copy)
    m = np.array(mask, dtype=np.int32, order="C", copy=copy)
    cont = np.empty_like(f)
    npix = f.shape[1]
    stride = max(1, int(stride))
    x = 2.0 * np.arange(npix) / (npix - 1) - 1.0
    nb = -(-npix // stride)
    xb = np.array([x[b * stride:(b + 1) * stride].mean() for b in range(nb)])
    bpowers = np.ascontiguousarray(xb[None, :] ** np.arange(2 * degree + 1)[:, None])
    _continuum_batch(f, iv, m, bpowers, stride, int(median_window) // 2, int(iterations),
                     float(lower), float(upper), cont)
    return f, iv, m, cont
