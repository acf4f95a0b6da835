"""S/N augmentation: degraded spectra carry exactly the noise their inverse variance says."""

from __future__ import annotations

import numpy as np
import torch

from specbridge.models import SpecFormer
from specbridge.models.specformer import span_mask
from specbridge.training.augment import augment_settings, degrade_snr, spectrum_snr


def _spectra(n: int, npix: int, snr: float, gen: torch.Generator):
    truth = 1 - 0.4 * torch.exp(-0.5 * ((torch.arange(npix) % 60 - 30) / 3.0) ** 2)
    truth = truth.expand(n, npix)
    ivar = torch.full((n, npix), snr ** 2)
    return truth, truth + torch.randn(n, npix, generator=gen) / snr, ivar


def test_degraded_noise_matches_the_new_inverse_variance():
    gen = torch.Generator().manual_seed(0)
    truth, flux, ivar = _spectra(4000, 600, 80.0, gen)
    ivar[:, :25] = 0
    flux[:, :25] = float("nan")
    new_flux, new_ivar = degrade_snr(flux, ivar, 0.5, 3.0, gen)
    changed = (new_ivar[:, 100] < ivar[:, 100])
    assert abs(changed.float().mean().item() - 0.5) < 0.03
    # pulls about the truth are unit normal in every spectrum, degraded or not
    pull = ((new_flux - truth) * new_ivar.sqrt())[:, 25:]
    assert abs(pull.std().item() - 1) < 0.01
    per = pull.std(dim=1)
    assert abs(per[changed].mean().item() - 1) < 0.02
    assert abs(per[~changed].mean().item() - 1) < 0.02
    # unusable pixels stay unusable and untouched; undegraded spectra identical
    assert (new_ivar[:, :25] == 0).all() and torch.isnan(new_flux[:, :25]).all()
    assert torch.equal(new_flux[~changed, 25:], flux[~changed, 25:])
    # new S/N log-uniform in [3, 80]: median at the geometric mean, none outside
    s = spectrum_snr(truth[changed], new_ivar[changed])
    assert s.min() >= 3 * 0.999 and s.max() <= 80 * 1.001
    assert abs(np.log(s.median().item()) - 0.5 * np.log(3 * 80)) < 0.1


def test_spectra_at_or_below_the_floor_and_fraction_zero_are_left_alone():
    gen = torch.Generator().manual_seed(1)
    _, flux, ivar = _spectra(50, 200, 2.5, gen)
    f, i = degrade_snr(flux, ivar, 1.0, 3.0, gen)
    assert torch.equal(f, flux) and torch.equal(i, ivar)
    _, flux, ivar = _spectra(50, 200, 40.0, gen)
    f, i = degrade_snr(flux, ivar, 0.0, 3.0, gen)
    assert f is flux and i is ivar
    assert augment_settings({}) == (0.0, 3.0)
    assert augment_settings({"snr_augment": {"fraction": 0.5, "snr_min": 4}}) == (0.5, 4.0)


def test_denoising_target_is_scored_in_the_inputs_units():
    """With ``target`` the hidden pixels are scored against it, standardised with the noisy
    input's statistics; target = input gives the ordinary loss."""
    torch.manual_seed(0)
    m = SpecFormer(npix=400, patch_size=20, patch_stride=10, d_model=16, n_layers=1,
                   n_heads=2).eval()
    gen = torch.Generator().manual_seed(3)
    truth, flux, ivar = _spectra(6, 400, 10.0, gen)
    hidden = span_mask(6, 400, 0.3, 40, gen)
    with torch.no_grad():
        plain = m.masked_loss(flux, ivar, hidden)
        same = m.masked_loss(flux, ivar, hidden, target=flux)
        pred, x, sd = m.reconstruction(flux, ivar, hidden, target=truth)
        pred0, x0, sd0 = m.reconstruction(flux, ivar, hidden)
    assert torch.allclose(plain, same)
    assert torch.equal(pred, pred0) and torch.equal(sd, sd0)  # the encoder sees the same
    # x - x0 is (truth - flux) / sd: the noise, in the input's standardised units
    assert torch.allclose((x0 - x) * sd, flux - truth, atol=1e-5)
