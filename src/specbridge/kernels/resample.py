"""Flux-conserving resampling to the rest frame on the common grid, with inverse variance and
mask propagation (Numba)."""

from __future__ import annotations

import numba
import numpy as np

from specbridge.flags import pixel_flag

NO_DATA = pixel_flag("NO_DATA")
PARTIAL = pixel_flag("PARTIAL")
INPUT_MASK = pixel_flag("INPUT_MASK")


@numba.njit(cache=True, nogil=True)
def _resample_one(in_edges, scale, flux, ivar, mask, out_edges, min_coverage,
                  out_flux, out_ivar, out_mask, use, fu, var):
    """use, fu, var: (nin,) work arrays."""
    nin = flux.size
    nout = out_edges.size - 1
    # per input pixel once: usable weight, flux and variance, so the overlap loop is branch-free
    for k in range(nin):
        f = flux[k]
        iv = ivar[k]
        if iv > 0.0 and np.isfinite(f) and np.isfinite(iv):
            use[k] = 1.0
            fu[k] = f
            var[k] = 1.0 / iv
        else:
            use[k] = 0.0
            fu[k] = 0.0
            var[k] = 0.0
    # output edges in the observed frame, instead of every input edge in the rest frame
    inv = 1.0 / scale
    j = 0
    for i in range(nout):
        lo = out_edges[i] * inv
        hi = out_edges[i + 1] * inv
        while j < nin and in_edges[j + 1] <= lo:
            j += 1
        sw = 0.0
        swf = 0.0
        sw2v = 0.0
        ntouch = 0.0
        m = 0
        k = j
        while k < nin and in_edges[k] < hi:
            ov = min(hi, in_edges[k + 1]) - max(lo, in_edges[k])
            u = use[k]
            sw += ov * u
            swf += ov * fu[k]
            sw2v += ov * ov * var[k]
            ntouch += 1.0 - u
            m |= mask[k]
            k += 1
        m = INPUT_MASK if m != 0 else 0
        if ntouch > 0.0:
            m |= PARTIAL
        if sw > min_coverage * (hi - lo) and sw2v > 0.0:
            out_flux[i] = swf / sw
            out_ivar[i] = sw * sw / sw2v
        else:
            out_flux[i] = 0.0
            out_ivar[i] = 0.0
            m |= NO_DATA
        out_mask[i] = m


@numba.njit(cache=True, parallel=True)
def _resample_batch(in_edges, z, flux, ivar, mask, out_edges, min_coverage,
                    out_flux, out_ivar, out_mask):
    nin = flux.shape[1]
    for s in numba.prange(flux.shape[0]):
        zs = z[s] if np.isfinite(z[s]) else 0.0
        use = np.empty(nin)
        fu = np.empty(nin)
        var = np.empty(nin)
        _resample_one(in_edges, 1.0 / (1.0 + zs), flux[s], ivar[s], mask[s], out_edges,
                      min_coverage, out_flux[s], out_ivar[s], out_mask[s], use, fu, var)


def resample_rest_frame(in_edges: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                        mask: np.ndarray | None, z: np.ndarray, out_edges: np.ndarray,
                        min_coverage: float = 0.5,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift spectra to the rest frame and resample them onto output pixels.

    Parameters
    ----------
    in_edges : (nin + 1,) observed-frame pixel edges, Angstrom, increasing (shared by all rows)
    flux, ivar : (n, nin) flux density and its inverse variance (any units)
    mask : (n, nin) int survey mask (non-zero = flagged) or None
    z : (n,) redshifts; rest-frame edges are in_edges / (1 + z) (NaN is taken as 0)
    out_edges : (nout + 1,) output pixel edges, Angstrom, increasing
    min_coverage : an output pixel needs usable input over more than this fraction of its width

    Returns
    -------
    flux (n, nout) float64: overlap-weighted mean of the usable input flux density, so the
    integral of flux over wavelength is conserved where the input is fully usable;
    ivar (n, nout) float64: 1 / (sum ov^2 var) * (sum ov)^2, the exact propagation of
    independent pixel errors; mask (n, nout) int32: pixel bits NO_DATA, PARTIAL, INPUT_MASK
    (specbridge.flags.PIXEL_BITS). Pixels with input ivar <= 0 or non-finite values are
    ignored. Flux density is not rescaled by (1 + z): the continuum normalisation divides out
    any overall factor.
    """
    flux = np.ascontiguousarray(flux)  # float32 or float64: Numba specialises on both
    ivar = np.ascontiguousarray(ivar)
    n, nin = flux.shape
    if mask is None:
        mask = np.zeros((n, nin), dtype=np.int32)
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    in_edges = np.ascontiguousarray(in_edges, dtype=np.float64)
    out_edges = np.ascontiguousarray(out_edges, dtype=np.float64)
    if in_edges.size != nin + 1 or ivar.shape != flux.shape or mask.shape != flux.shape:
        raise ValueError("resample_rest_frame: inconsistent shapes")
    nout = out_edges.size - 1
    out_flux = np.empty((n, nout), dtype=np.float64)
    out_ivar = np.empty((n, nout), dtype=np.float64)
    out_mask = np.empty((n, nout), dtype=np.int32)
    _resample_batch(in_edges, np.ascontiguousarray(z, dtype=np.float64), flux, ivar, mask,
                    out_edges, float(min_coverage), out_flux, out_ivar, out_mask)
    return out_flux, out_ivar, out_mask
