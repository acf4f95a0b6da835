"""The preprocessing chain for a batch of spectra sharing one input grid: rest-frame
resampling onto the common grid, optional broadening to a target resolving power, continuum
normalisation. Arrays in, arrays out; the driver (``specbridge preprocess``) does the I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from specbridge.kernels.broaden import broaden_gaussian
from specbridge.kernels.continuum import continuum_normalise
from specbridge.kernels.grid import LogGrid, pixel_edges
from specbridge.kernels.resample import resample_rest_frame

FWHM_PER_SIGMA = 2.3548200450309493
#: LAMOST LRS nominal resolving power, the target when DESI is broadened to LAMOST's resolution
LAMOST_R = 1800.0


@dataclass(frozen=True)
class PreprocessSettings:
    grid: LogGrid
    continuum: bool
    degree: int
    median_window: int
    iterations: int
    target_r: float | None  # broaden to this resolving power (None: no broadening)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], target_r: float | None = None) -> PreprocessSettings:
        c = cfg["preprocess"]["continuum"]
        return cls(LogGrid.from_config(cfg["grid"]), c["method"] == "envelope",
                   c["poly_degree"], c["median_window"], c["iterations"], target_r)


def resolution_sigma_aa(rdata: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Gaussian-equivalent sigma (Angstrom), (n, npix), of DESI resolution data
    (n, ndiag, npix): the square root of the second moment of each row's kernel."""
    ndiag = rdata.shape[1]
    offsets = (ndiag // 2 - np.arange(ndiag)).astype(np.float64)
    r = np.clip(rdata, 0, None)
    norm = r.sum(axis=1)
    m1 = (r * offsets[None, :, None]).sum(axis=1) / np.where(norm > 0, norm, 1)
    m2 = (r * offsets[None, :, None] ** 2).sum(axis=1) / np.where(norm > 0, norm, 1)
    sig_pix = np.sqrt(np.clip(m2 - m1 ** 2, 0, None))
    return sig_pix * np.gradient(wave)[None, :]


def nominal_desi_sigma_aa(wave: np.ndarray) -> np.ndarray:
    """DESI's resolution where no RESOLUTION data is at hand: R rising linearly from 2000 at
    3600 A to 3200 at 5800 A (B arm), 3200-4100 (R arm), 4100-5100 (Z arm) -> sigma (A)."""
    r = np.interp(wave, [3600, 5800, 7600, 9800], [2000, 3200, 4100, 5100])
    return wave / r / FWHM_PER_SIGMA


def preprocess_batch(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                     mask: np.ndarray | None, z: np.ndarray, settings: PreprocessSettings,
                     sigma_in_aa: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectra (n, nin) on the observed grid ``wave`` (nin,) -> (flux, ivar, mask) (n, npix).

    ``sigma_in_aa``: (n, nin) or (nin,) instrumental sigma (A) of the input, needed when
    ``settings.target_r`` asks for broadening; the extra Gaussian of width
    sqrt(sigma_target^2 - sigma_in^2) is applied on the common grid.
    """
    g = settings.grid
    f, iv, m = resample_rest_frame(pixel_edges(wave), flux, ivar, mask, z, g.edges)
    if settings.target_r is not None and sigma_in_aa is not None:
        out_wave = g.wave
        s_t = out_wave / settings.target_r / FWHM_PER_SIGMA
        dlam = out_wave * np.log(10.0) * g.step
        if np.ndim(sigma_in_aa) == 1:
            # one instrumental profile for all (nominal resolution): stellar redshifts
            # (|z| < 0.003) move it by under a pixel, so one kernel serves the batch
            s_out = np.interp(out_wave, wave, sigma_in_aa)
            extra = np.sqrt(np.clip(s_t ** 2 - s_out ** 2, 0, None)) / dlam
        else:
            # input sigma at each output pixel (the rest frame scales wavelengths by 1/(1+z))
            zz = np.nan_to_num(np.asarray(z, dtype=np.float64))
            s_out = np.empty((f.shape[0], out_wave.size))
            for i in range(f.shape[0]):
                s_out[i] = np.interp(out_wave * (1 + zz[i]), wave, sigma_in_aa[i]) / (1 + zz[i])
            extra = np.sqrt(np.clip(s_t[None, :] ** 2 - s_out ** 2, 0, None)) / dlam[None, :]
        f, iv = broaden_gaussian(f, iv, extra)
    if settings.continuum:
        f, iv, m, _ = continuum_normalise(f, iv, m, degree=settings.degree,
                                          median_window=settings.median_window,
                                          iterations=settings.iterations, inplace=True)
    return f, iv, m
