"""Model architectures: parameter counts, shapes, loss behaviour."""

from __future__ import annotations

import pytest
import torch

from specbridge.models import SpecFormer, SpectrumMLP, gaussian_nll
from specbridge.models.specformer import span_mask


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
    assert m.n_patches == 146  # 1462 pixels: the last patch is padded, no pixel left out
    assert bool((m.coverage[:1462] >= 1).all())
    flux = 1 + 0.1 * torch.randn(3, 1462)
    ivar = torch.full((3, 1462), 100.0)
    ivar[0, :200] = 0  # pixels without information
    assert m.embed(flux, ivar).shape == (3, 32)
    hidden = span_mask(3, 1462, 0.3, 40, torch.Generator().manual_seed(1))
    loss, base = m(flux, ivar, hidden)
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(base) and base > 0
    loss.backward()
    assert m.reconstruct.weight.grad is not None
    assert m.blocks[0].qkv.weight.grad is not None


def test_region_pooled_embedding_keeps_where_the_tokens_are():
    torch.manual_seed(0)
    kw = {"npix": 1462, "patch_size": 20, "patch_stride": 10, "d_model": 16, "n_layers": 1,
          "n_heads": 2}
    one = SpecFormer(**kw).eval()
    pooled = SpecFormer(**kw, pool_regions=5).eval()
    pooled.load_state_dict(one.state_dict())
    flux, ivar = 1 + 0.1 * torch.randn(2, 1462), torch.full((2, 1462), 100.0)
    with torch.no_grad():
        tokens, _, _ = one.encode(flux, ivar)
        e1, e5 = one.embed(flux, ivar), pooled.embed(flux, ivar)
    assert e1.shape == (2, 16) and e5.shape == (2, 80) and pooled.embed_dim == 80
    # 146 tokens in regions of 30, 29, 29, 29, 29, blue to red
    torch.testing.assert_close(e5[:, :16], tokens[:, :30].mean(1))
    torch.testing.assert_close(e5[:, -16:], tokens[:, -29:].mean(1))
    # the regions' token-weighted mean is the plain mean
    sizes = torch.tensor([30.0, 29, 29, 29, 29])
    torch.testing.assert_close((e5.reshape(2, 5, 16) * sizes[:, None]).sum(1) / 146, e1)
    with pytest.raises(ValueError, match="pool_regions"):
        SpecFormer(**kw, pool_regions=147)


@pytest.mark.parametrize("fraction,span", [(0.3, 40), (0.15, 20), (0.5, 30), (0.3, 7)])
def test_span_mask_reaches_the_configured_fraction(fraction, span):
    mask = span_mask(64, 1462, fraction, span, torch.Generator().manual_seed(3))
    realised = mask.float().mean(dim=1)
    assert torch.all((realised - fraction).abs() < 0.02), realised
    # contiguous spans: every hidden run is a multiple of the span long
    row = mask[0].int()
    edges = torch.nonzero(torch.diff(torch.cat([torch.zeros(1, dtype=torch.int),
                                                row, torch.zeros(1, dtype=torch.int)])))
    runs = (edges[1::2] - edges[::2]).flatten()
    assert torch.all(runs % span == 0)


@pytest.mark.parametrize("flux_scale", [None, 0.1])
def test_no_hidden_pixel_reaches_the_encoder(flux_scale):
    """Perturbing hidden pixels leaves every output token, the reconstruction and the loss's
    prediction unchanged; perturbing a visible pixel changes them (with either
    standardisation)."""
    torch.manual_seed(0)
    m = SpecFormer(npix=500, patch_size=20, patch_stride=10, d_model=32, n_layers=2,
                   n_heads=4, flux_scale=flux_scale).eval()
    flux = 1 + 0.1 * torch.randn(4, 500)
    ivar = torch.full((4, 500), 50.0)
    hidden = span_mask(4, 500, 0.3, 40, torch.Generator().manual_seed(2))
    noisy = torch.where(hidden, flux + 10 * torch.randn_like(flux), flux)
    with torch.no_grad():
        out0, _, _ = m.encode(flux, ivar, hidden)
        out1, _, _ = m.encode(noisy, ivar, hidden)
        pred0, _, _ = m.reconstruction(flux, ivar, hidden)
        pred1, _, _ = m.reconstruction(noisy, ivar, hidden)
        assert torch.allclose(out0, out1, atol=1e-6)
        assert torch.allclose(pred0, pred1, atol=1e-6)
        visible = torch.nonzero(~hidden[0])[0, 0]
        poked = flux.clone()
        poked[0, visible] += 1.0
        out2, _, _ = m.encode(poked, ivar, hidden)
        assert not torch.allclose(out0[0], out2[0], atol=1e-6)


def test_specformer_edge_cases():
    with pytest.raises(ValueError, match="no patch"):
        SpecFormer(npix=200, patch_size=20, patch_stride=30, d_model=16, n_layers=1,
                   n_heads=2)
    m = SpecFormer(npix=200, patch_size=20, patch_stride=10, d_model=16, n_layers=1,
                   n_heads=2).eval()
    flux = 1 + 0.1 * torch.randn(3, 200)
    ivar = torch.full((3, 200), 100.0)
    flux[1, :50] = float("nan")  # NaN flux where ivar = 0 must not spread
    ivar[1, :50] = 0
    ivar[2] = 0  # no usable pixel
    with torch.no_grad():
        s = m.spectrum_scores(flux, ivar)
        e = m.embed(flux, ivar)
    assert torch.isfinite(s[:2]).all() and torch.isnan(s[2])
    assert torch.isfinite(e).all()


def test_out_of_domain_score_is_noise_aware():
    """The spectrum-space score of pure noise about a level is ~0 for a model that predicts
    that level, and grows with structure the model cannot predict."""
    torch.manual_seed(0)
    m = SpecFormer(npix=400, patch_size=20, patch_stride=10, d_model=16, n_layers=1,
                   n_heads=2).eval()
    with torch.no_grad():  # a model that predicts 0 (the mean) everywhere
        m.reconstruct.weight.zero_()
        m.reconstruct.bias.zero_()
    sigma = 0.05
    noise = 1 + sigma * torch.randn(8, 400)
    ivar = torch.full((8, 400), 1 / sigma ** 2)
    wave = torch.arange(400.0)
    lines = noise - 0.3 * torch.exp(-0.5 * ((wave % 50 - 25) / 2) ** 2)
    with torch.no_grad():
        s_noise = m.spectrum_scores(noise, ivar)
        s_lines = m.spectrum_scores(lines, ivar)
    assert s_noise.abs().max() < 0.15
    assert s_lines.min() > 0.5


def test_specformer_production_size():
    m = SpecFormer(d_model=768, n_layers=6, n_heads=6)
    n = sum(p.numel() for p in m.parameters())
    assert 40e6 < n < 46e6  # ~43 M (docs/design.md)


def test_embedding_with_the_stats_token_keeps_each_spectrums_line_depth():
    torch.manual_seed(0)
    kw = {"npix": 1462, "patch_size": 20, "patch_stride": 10, "d_model": 16, "n_layers": 1,
          "n_heads": 2, "pool_regions": 4}
    plain = SpecFormer(**kw).eval()
    with_stats = SpecFormer(**kw, embed_stats_token=True).eval()
    with_stats.load_state_dict(plain.state_dict())  # the option adds no weights
    assert with_stats.embed_dim == 80
    flux, ivar = 1 + 0.1 * torch.randn(2, 1462), torch.full((2, 1462), 100.0)
    with torch.no_grad():
        e, e_plain = with_stats.embed(flux, ivar), plain.embed(flux, ivar)
        tokens, _, _ = with_stats.encode_all(flux, ivar)
        # lines twice as deep: the same standardised patches, another std
        deeper = with_stats.embed(1 + 2 * (flux - 1), ivar)
        x1, _, _ = with_stats.standardise(flux, ivar)
        x2, _, _ = with_stats.standardise(1 + 2 * (flux - 1), ivar)
    assert e.shape == (2, 80)
    assert tokens.shape == (2, 1 + with_stats.n_patches, 16)
    torch.testing.assert_close(tokens[:, 1:], with_stats.encode(flux, ivar)[0])
    torch.testing.assert_close(e[:, :64], e_plain)
    torch.testing.assert_close(e[:, 64:], tokens[:, 0])
    torch.testing.assert_close(x1, x2)
    assert (deeper[:, 64:] - e[:, 64:]).abs().max() > 1e-3
    # known answer without transformer blocks: the stats token's own embedding, normalised
    bare = SpecFormer(**{**kw, "n_layers": 0}, embed_stats_token=True).eval()
    with torch.no_grad():
        _, stats, _ = bare.standardise(flux, ivar)
        want = bare.norm(bare.stats_embed(stats) + bare.pos[:, 0])
        torch.testing.assert_close(bare.embed(flux, ivar)[:, -16:], want)


def test_fixed_flux_scale_keeps_absolute_line_depths_and_ignores_noise_level():
    """With ``flux_scale`` the encoder sees (flux - 1) / flux_scale: a known answer, lines
    twice as deep give patches twice as large, and added noise does not shrink the noiseless
    pixels' values as a per-spectrum std (which the noise inflates) does."""
    kw = {"npix": 300, "patch_size": 20, "patch_stride": 10, "d_model": 16, "n_layers": 1,
          "n_heads": 2}
    fixed, per_spectrum = SpecFormer(**kw, flux_scale=0.1), SpecFormer(**kw)
    g = torch.Generator().manual_seed(4)
    flux = 1 - 0.2 * torch.rand(2, 300, generator=g)
    ivar = torch.full((2, 300), 100.0)
    ivar[0, :7] = 0.0
    x, stats, scale = fixed.standardise(flux, ivar)
    want = torch.where(ivar > 0, (flux - 1) / 0.1, torch.zeros_like(flux))
    torch.testing.assert_close(x, want)
    torch.testing.assert_close(scale, torch.full((2, 1), 0.1))
    # the stats token sees the same per-spectrum statistics either way
    torch.testing.assert_close(stats, per_spectrum.standardise(flux, ivar)[1])
    deeper, _, _ = fixed.standardise(1 + 2 * (flux - 1), ivar)
    torch.testing.assert_close(deeper, 2 * x)
    # noise on every other pixel: the untouched pixels keep their value with the fixed scale
    noisy = flux.clone()
    noisy[:, ::2] += 0.3 * torch.randn(2, 150, generator=g)
    quiet = torch.zeros(300, dtype=torch.bool)
    quiet[1::2] = True
    quiet &= ivar[0] > 0
    torch.testing.assert_close(fixed.standardise(noisy, ivar)[0][0, quiet], x[0, quiet])
    shrunk = per_spectrum.standardise(noisy, ivar)[0][0, quiet].abs().mean()
    assert shrunk < 0.8 * per_spectrum.standardise(flux, ivar)[0][0, quiet].abs().mean()
    with pytest.raises(ValueError, match="flux_scale"):
        SpecFormer(**kw, flux_scale=0.0)


def test_fixed_flux_scale_in_the_denoising_target_and_the_noise_term():
    """With ``flux_scale`` the denoising target is (target - 1) / flux_scale, and the
    out-of-domain score's noise term is 1 / (ivar flux_scale^2): doubling ivar (which
    changes nothing the encoder sees) raises the score by exactly half of 1 / (ivar 0.01)."""
    torch.manual_seed(1)
    m = SpecFormer(npix=300, patch_size=20, patch_stride=10, d_model=16, n_layers=1,
                   n_heads=2, flux_scale=0.1, score_span=40).eval()
    clean = 1 - 0.2 * torch.rand(2, 300)
    noisy = clean + 0.05 * torch.randn(2, 300)
    ivar = torch.full((2, 300), 100.0)
    with torch.no_grad():
        _, target, scale = m.encode_all(noisy, ivar, target=clean)
        s1 = m.spectrum_scores(noisy, ivar)
        s2 = m.spectrum_scores(noisy, 2 * ivar)
    torch.testing.assert_close(target, (clean - 1) / 0.1)
    torch.testing.assert_close(scale, torch.full((2, 1), 0.1))
    torch.testing.assert_close(s2 - s1, torch.full((2,), 0.5), rtol=1e-4, atol=1e-4)


def test_specformer_checkpoint_architecture_keeps_the_stats_token():
    from specbridge.models.checkpoint import build_model
    from specbridge.models.transfer import specformer_architecture

    arch = {"npix": 1462, "patch_size": 20, "patch_stride": 10, "d_model": 16, "n_layers": 1,
            "n_heads": 2, "pool_regions": 3, "embed_stats_token": True, "flux_scale": 0.1}
    assert build_model("specformer", arch).embed_dim == 64
    assert build_model("specformer", arch).flux_scale == 0.1
    head = {"npix": 64, "hidden": [8], "labels": ["teff"], "dropout": 0.0}
    cand = specformer_architecture(arch, head)
    assert cand["embed_dim"] == 64 and cand["specformer"]["flux_scale"] == 0.1
    net = build_model("candidate", cand).eval()  # the servable SpecFormer + head runs
    assert [m.flux_scale for m in net.modules() if isinstance(m, SpecFormer)] == [0.1]
    with torch.no_grad():
        mean, log_var = net(torch.stack([1 + 0.1 * torch.randn(2, 1462),
                                         torch.full((2, 1462), 100.0)], dim=1))
    assert mean.shape == (2, 1) and torch.isfinite(mean).all()
    old = {k: v for k, v in arch.items()
           if k not in ("embed_stats_token", "flux_scale")}  # older checkpoints
    assert build_model("specformer", old).embed_dim == 48
    assert build_model("specformer", old).flux_scale is None
