"""Model architectures: parameter counts, shapes, loss behaviour."""

from __future__ import annotations

import torch

from specbridge.models import SpecFormer, SpectrumMLP, gaussian_nll
from specbridge.models.specformer import chunk_mask


def test_mlp_has_the_papers_parameter_count():
    # 1462*1024+1024 + 2*1024 + 1024*512+512 + 2*512 + 512*64+64 + 2*64 + 2*(64+1)
    m = SpectrumMLP(1462, (1024, 512, 64), n_labels=1)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    # Linear+BN 1462->1024->512->64 plus mean and log-variance heads: ~2.06 M (docs/design.md)
    assert n == 2_059_074
    mean, log_var = SpectrumMLP(1462, (1024, 512, 64), n_labels=4).eval()(torch.randn(5, 1462))
    assert mean.shape == log_var.shape == (5, 4)


def test_gaussian_nll_uses_label_errors_and_ignores_missing_labels():
    mean = torch.zeros(2, 2)
    log_var = torch.zeros(2, 2)
    target = torch.tensor([[1.0, float("nan")], [1.0, 0.0]])
    base = gaussian_nll(mean, log_var, target)
    assert torch.isfinite(base)
    # a larger reference error pulls the prediction less (smaller gradient)
    grads = []
    for e in (None, torch.full((2, 2), 2.0)):
        m = mean.clone().requires_grad_(True)
        gaussian_nll(m, log_var, target, e).backward()
        grads.append(m.grad.abs().sum())
    assert grads[1] < grads[0]
    # the NaN label contributes nothing, whatever the prediction there
    mean2 = mean.clone()
    mean2[0, 1] = 100.0
    assert torch.isclose(gaussian_nll(mean2, log_var, target), base)


def test_specformer_shapes_and_masked_loss():
    torch.manual_seed(0)
    m = SpecFormer(npix=1462, patch_size=20, patch_stride=10, d_model=32, n_layers=2,
                   n_heads=4)
    assert m.n_patches == 145
    flux = 1 + 0.1 * torch.randn(3, 1462)
    ivar = torch.full((3, 1462), 100.0)
    ivar[0, :200] = 0  # pixels without information
    assert m.embed(flux, ivar).shape == (3, 32)
    mask = chunk_mask(3, m.n_patches, 0.3, 4, torch.Generator().manual_seed(1))
    assert 0.15 < mask.float().mean() <= 0.35
    loss = m.masked_loss(flux, ivar, mask)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert m.reconstruct.weight.grad is not None


def test_specformer_production_size():
    m = SpecFormer(d_model=768, n_layers=6, n_heads=6)
    n = sum(p.numel() for p in m.parameters())
    assert 40e6 < n < 46e6  # ~43 M (docs/design.md)
