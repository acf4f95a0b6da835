"""HEALPix pixel numbers (NESTED scheme) of sky positions, as DESI groups its spectra
(nside 64). A NumPy port of the standard ang2pix_nest algorithm (Gorski et al. 2005)."""

from __future__ import annotations

import numpy as np


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Interleave zeros between the bits of v (bit k -> bit 2k), for v < 2**30."""
    v = v.astype(np.int64)
    out = np.zeros_like(v)
    for k in range(30):
        out |= ((v >> k) & 1) << (2 * k)
    return out


def ang2pix_nest(nside: int, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n,) int64 NESTED pixel of each (RA, Dec) in degrees; -1 where either is not finite.
    ``nside`` is a power of 2."""
    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"nside {nside} is not a power of 2")
    ra = np.atleast_1d(np.asarray(ra_deg, np.float64))
    dec = np.atleast_1d(np.asarray(dec_deg, np.float64))
    ok = np.isfinite(ra) & np.isfinite(dec)
    z = np.sin(np.radians(np.where(ok, dec, 0.0)))
    tt = np.mod(np.radians(np.where(ok, ra, 0.0)), 2 * np.pi) / (np.pi / 2)  # [0, 4)
    za = np.abs(z)
    face = np.zeros(ra.shape, np.int64)
    ix = np.zeros(ra.shape, np.int64)
    iy = np.zeros(ra.shape, np.int64)
    eq = za <= 2.0 / 3.0
    # equatorial belt
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * z[eq] * 0.75
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp, ifm = jp // nside, jm // nside
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1
    # polar caps
    pc = ~eq
    ntt = np.minimum(tt[pc].astype(np.int64), 3)
    tp = tt[pc] - ntt
    tmp = nside * np.sqrt(3 * (1 - za[pc]))
    jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(((1 - tp) * tmp).astype(np.int64), nside - 1)
    north = z[pc] >= 0
    face[pc] = np.where(north, ntt, ntt + 8)
    ix[pc] = np.where(north, nside - jm - 1, jp)
    iy[pc] = np.where(north, nside - jp - 1, jm)
    pix = face * nside * nside + _spread_bits(ix) + (_spread_bits(iy) << 1)
    return np.where(ok, pix, -1)
