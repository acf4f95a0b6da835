"""Signal-to-noise augmentation: spectra degraded to a lower S/N by adding Gaussian noise.

The target survey's spectra can be much noisier than the pretraining survey's (the embedded
default: median S/N per common-grid pixel LAMOST 69, DESI 13), and a network trained on
high-S/N spectra only has never seen the noise it meets there. A degraded copy of a spectrum
is what the same star would give in a shorter exposure: the inverse variance is scaled down
by ``(snr_new / snr)^2`` and noise of variance ``1 / ivar_new - 1 / ivar`` is added, so the
flux errors stay exactly what ``ivar_new`` says. The new S/N is drawn log-uniformly between
``snr_min`` and the spectrum's own S/N; spectra already below ``snr_min`` are left as they
are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def spectrum_snr(flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
    """(batch,) median of |flux| sqrt(ivar) over the usable pixels (ivar > 0): the S/N per
    pixel of the grid the spectra are on (the common grid, after resampling: not the
    catalogue's native-pixel SNR; the manifest's formula, io.manifest.pixel_quality, on
    other pixels); 0 where a spectrum has none. flux, ivar: (batch, npix), flux
    continuum-normalised."""
    use = ivar > 0
    s = torch.where(use, flux.abs() * ivar.clamp(min=0).sqrt(),
                    torch.full_like(flux, float("nan")))
    return torch.nan_to_num(s.nanmedian(dim=1).values, nan=0.0)


def degrade_to_snr(flux: torch.Tensor, ivar: torch.Tensor, snr_new: torch.Tensor,
                   generator: torch.Generator | None = None,
                   snr: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, ivar), each (batch, npix) like the inputs: each spectrum degraded to the S/N
    ``snr_new`` (batch,) (per pixel of its grid, as :func:`spectrum_snr`), or left as it is
    where that is not below its own S/N ``snr`` (batch,; computed when None). Unusable
    pixels (ivar = 0) stay unusable and untouched; pixels with ivar below 1e-30 get no noise.
    The noise is drawn from ``generator`` (torch's global RNG when None) on the CPU, so a
    seeded run is the same on any device."""
    snr = (spectrum_snr(flux, ivar) if snr is None else snr).cpu()
    snr_new = snr_new.cpu().to(snr.dtype)
    scale = torch.where(snr_new < snr, (snr_new / snr.clamp(min=1e-12)) ** 2,
                        torch.ones_like(snr))
    noise = torch.randn(flux.shape, generator=generator)
    scale, noise = scale.to(flux.device, flux.dtype)[:, None], noise.to(flux.device, flux.dtype)
    use = ivar > 0
    ivar_new = ivar * scale
    extra_var = torch.where(use, (1.0 / ivar_new.clamp(min=1e-30)
                                  - 1.0 / ivar.clamp(min=1e-30)).clamp(min=0),
                            torch.zeros_like(ivar))
    return torch.where(use, flux + noise * extra_var.sqrt(), flux), ivar_new


def degrade_snr(flux: torch.Tensor, ivar: torch.Tensor, fraction: float, snr_min: float,
                generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, ivar), each (batch, npix) like the inputs: a random ``fraction`` of the spectra
    degraded (:func:`degrade_to_snr`) to an S/N drawn log-uniformly in [snr_min, own S/N];
    the others, and those whose S/N is already at most ``snr_min``, unchanged. Random numbers
    from ``generator`` (torch's global RNG when None) on the CPU."""
    b = flux.shape[0]
    if fraction <= 0 or b == 0:
        return flux, ivar
    snr = spectrum_snr(flux, ivar).cpu()
    pick = (torch.rand(b, generator=generator) < fraction) & (snr > snr_min)
    u = torch.rand(b, generator=generator)
    lo = torch.log(torch.tensor(snr_min))
    new = torch.exp(lo + u * (torch.log(snr.clamp(min=snr_min)) - lo))
    return degrade_to_snr(flux, ivar, torch.where(pick, new, snr), generator, snr)


SNR_MIN = 3.0  # the schema's default snr_min


def augment_settings(training: Mapping[str, Any]) -> tuple[float, float]:
    """(fraction, snr_min) of a training section's ``snr_augment`` (fraction 0: off)."""
    a = training.get("snr_augment") or {}
    return float(a.get("fraction", 0.0)), float(a.get("snr_min", SNR_MIN))
