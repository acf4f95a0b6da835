"""SpecFormer: a transformer foundation model for spectra (SpecCLIP conventions, docs/design.md).

Each spectrum (batch, npix) is standardised by the mean and standard deviation of its usable,
visible pixels (or, with ``flux_scale``, continuum-normalised flux is taken as (flux - 1) /
flux_scale) and cut into patches of ``patch_size`` pixels with stride ``patch_stride``; the
spectrum is padded at the red end (with unusable pixels) so that the patches cover every pixel.
A leading token carries the statistics (mean and log10 std); patches are embedded linearly,
learned positions are added, and a stack of pre-LayerNorm transformer blocks (``d_model``,
``n_layers``, ``n_heads``; attention and feed-forward built from named nn.Linear layers
``qkv``, ``proj``, ``fc1``, ``fc2`` so that LoRA can adapt each of them) follows.

Self-supervised objective (masked pixels, not tokens): contiguous spans of pixels are hidden;
every patch token that covers a hidden pixel is replaced by a learned mask token, and the
hidden pixels are left out of the standardisation, so no hidden value reaches the encoder.
Each token reconstructs its patch; a pixel's reconstruction is the mean over the tokens that
cover it. The loss is the plain mean squared error over hidden usable pixels of the
standardised flux (so high-S/N spectra do not dominate a batch). With S/N augmentation
(:mod:`specbridge.training.augment`) the encoder sees a noisier copy and is scored against the
spectrum as observed, so it learns what a noisy spectrum's lines are, not its noise. The
embedding is the mean over the output patch tokens (d_model), standardised downstream with
stored statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def n_patches(npix: int, size: int, stride: int) -> int:
    """Number of patches covering ``npix`` pixels, the last one padded where needed."""
    return -(-max(npix - size, 0) // stride) + 1


def pool_tokens(tokens: torch.Tensor, regions: int) -> torch.Tensor:
    """(batch, regions x d_model): the means of ``tokens`` (batch, n_tokens, d_model) over
    ``regions`` contiguous runs of tokens (as equal as can be), in order, concatenated."""
    return torch.cat([r.mean(dim=1) for r in tokens.tensor_split(regions, dim=1)], dim=1)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x)), with
    ``qkv`` (d -> 3d) and ``proj`` (d -> d) for attention and ``fc1`` (d -> 4d), ``fc2``
    (4d -> d) for the GELU feed-forward; input and output (batch, tokens, d_model)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads)
                   .permute(2, 0, 3, 1, 4))
        a = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class SpecFormer(nn.Module):
    """The spectral transformer (module docstring). Spectra (batch, ``npix``) on the common
    grid; ``patch_size`` and ``patch_stride`` in pixels; ``score_span`` the hidden span
    (pixels) of :meth:`spectrum_scores`; ``pool_regions`` and ``embed_stats_token`` shape
    :meth:`embed`; ``flux_scale`` (continuum-normalised flux units, e.g. 0.1) replaces the
    per-spectrum standardisation by (flux - 1) / flux_scale (:meth:`standardise`)."""

    def __init__(self, npix: int = 1462, patch_size: int = 20, patch_stride: int = 10,
                 d_model: int = 768, n_layers: int = 6, n_heads: int = 6,
                 dropout: float = 0.0, score_span: int = 40, pool_regions: int = 1,
                 embed_stats_token: bool = False, flux_scale: float | None = None):
        super().__init__()
        if patch_stride > patch_size:
            raise ValueError(f"patch_stride {patch_stride} > patch_size {patch_size} would "
                             "leave pixels in no patch")
        self.npix, self.size, self.stride = npix, patch_size, patch_stride
        self.score_span = score_span  # the pretraining's mask_span, for spectrum_scores
        self.n_patches = n_patches(npix, patch_size, patch_stride)
        if not 1 <= pool_regions <= self.n_patches:
            raise ValueError(f"pool_regions {pool_regions} must be 1 to {self.n_patches} (the "
                             "patch tokens)")
        self.pool_regions = pool_regions
        if flux_scale is not None and not flux_scale > 0:
            raise ValueError(f"flux_scale {flux_scale} must be positive (or None)")
        self.flux_scale = None if flux_scale is None else float(flux_scale)
        self.embed_stats_token = embed_stats_token
        self.embed_dim = (pool_regions + int(embed_stats_token)) * d_model
        self.pad = (self.n_patches - 1) * patch_stride + patch_size - npix
        self.patch_embed = nn.Linear(patch_size, d_model)
        self.stats_embed = nn.Linear(2, d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_patches + 1, d_model))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.reconstruct = nn.Linear(d_model, patch_size)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        index = (torch.arange(self.n_patches)[:, None] * patch_stride
                 + torch.arange(patch_size)[None, :])
        self.register_buffer("pixel_index", index.reshape(-1), persistent=False)
        cover = torch.zeros(npix + self.pad).index_add_(0, index.reshape(-1),
                                                         torch.ones(index.numel()))
        self.register_buffer("coverage", cover, persistent=False)

    def standardise(self, flux: torch.Tensor, ivar: torch.Tensor,
                    hidden: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's input, x (batch, npix) = (flux - centre) / scale with unusable pixels
        set to 0 (hidden ones included); stats (batch, 2) = the mean and log10 std of each
        spectrum's usable (ivar > 0), visible (not ``hidden``) pixels, which the stats token
        sees; scale (batch, 1). Without ``flux_scale`` centre and scale are those per-spectrum
        mean and std (the paper's standardisation: only relative line depths reach the patch
        tokens); with it, 1 and ``flux_scale`` (continuum-normalised flux keeps its absolute
        line depths, and a noisy spectrum's lines are not shrunk by a std its noise inflates).
        flux, ivar: (batch, npix); hidden: (batch, npix) bool or None."""
        x, stats, _, scale = self._standardise(flux, ivar, hidden)
        return x, stats, scale

    def _standardise(self, flux: torch.Tensor, ivar: torch.Tensor,
                     hidden: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`standardise` with the centre (batch, 1) too: (x, stats, centre, scale)."""
        use = ivar > 0
        vis = use if hidden is None else use & ~hidden
        w = vis.to(flux.dtype)
        flux = torch.where(use, flux, torch.zeros_like(flux))  # NaN where ivar = 0 is allowed
        n = w.sum(1, keepdim=True).clamp(min=1)
        mu = (flux * w).sum(1, keepdim=True) / n
        sd = (((flux - mu) ** 2 * w).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
        stats = torch.cat([mu, torch.log10(sd)], dim=1)
        if self.flux_scale is None:
            centre, scale = mu, sd
        else:
            centre, scale = torch.ones_like(mu), torch.full_like(sd, self.flux_scale)
        x = torch.where(use, (flux - centre) / scale, torch.zeros_like(flux))
        return x, stats, centre, scale

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, npix) -> (batch, n_patches, patch_size), zero-padded at the red end."""
        if self.pad:
            x = F.pad(x, (0, self.pad))
        return x.unfold(1, self.size, self.stride)

    def covering(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, n_patches) bool: the tokens that cover at least one ``hidden`` pixel."""
        return self.patches(hidden.to(torch.uint8)).amax(-1) > 0

    def unpatch(self, p: torch.Tensor) -> torch.Tensor:
        """(batch, n_patches, patch_size) -> (batch, npix): each pixel the mean of the patch
        values that cover it (the inverse of :meth:`patches` for consistent patches)."""
        p = p.float()  # sums in float32 also under bf16 autocast
        out = p.new_zeros(p.shape[0], self.npix + self.pad)
        out.index_add_(1, self.pixel_index, p.reshape(p.shape[0], -1))
        return (out / self.coverage)[:, :self.npix]

    def encode(self, flux: torch.Tensor, ivar: torch.Tensor,
               hidden: torch.Tensor | None = None, target: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output patch tokens (batch, n_patches, d_model), the standardised flux and the
        scale it was divided by: :meth:`encode_all` without the stats token."""
        out, x, scale = self.encode_all(flux, ivar, hidden, target)
        return out[:, 1:], x, scale

    def encode_all(self, flux: torch.Tensor, ivar: torch.Tensor,
                   hidden: torch.Tensor | None = None, target: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output tokens (batch, 1 + n_patches, d_model: the stats token, then the patches
        blue to red), the standardised flux (batch, npix; hidden
        pixels included, standardised with the visible pixels' statistics, see
        :meth:`standardise`) and the scale it was divided by (batch, 1: each spectrum's std,
        or ``flux_scale``).

        ``hidden`` (batch, npix) bool: pixels kept from the encoder; every token covering one
        is replaced by the mask token and they do not enter the standardisation.
        ``target`` (batch, npix): returned standardised (with ``flux``'s statistics) in place
        of ``flux``, for denoising (``flux`` a noisier copy of ``target``).
        """
        x, stats, centre, scale = self._standardise(flux, ivar, hidden)
        x_out = x
        if target is not None:
            x_out = torch.where(ivar > 0, (target - centre) / scale, torch.zeros_like(x))
        seen = x if hidden is None else torch.where(hidden, torch.zeros_like(x), x)
        tok = self.patch_embed(self.patches(seen))
        if hidden is not None:
            masked = self.covering(hidden)
            tok = torch.where(masked[..., None], self.mask_token.to(tok.dtype).expand_as(tok),
                              tok)
        tok = torch.cat([self.stats_embed(stats)[:, None, :], tok], dim=1) + self.pos
        for block in self.blocks:
            tok = block(tok)
        out = self.norm(tok)
        return out, x_out, scale

    def embed(self, flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
        """(batch, embed_dim) the means of the output patch tokens over ``pool_regions``
        contiguous wavelength regions (as equal in tokens as can be), blue to red,
        concatenated (one region: the plain mean over all tokens); with
        ``embed_stats_token``, followed by the output of the stats token, the one token that
        sees each spectrum's own mean and std, which the per-spectrum standardisation (without
        ``flux_scale``) divides out of the patches (absolute line depths: metallicity).
        embed_dim = (pool_regions + embed_stats_token) x d_model. Not standardised here."""
        full, _, _ = self.encode_all(flux, ivar)
        pooled = pool_tokens(full[:, 1:], self.pool_regions)
        if not self.embed_stats_token:
            return pooled
        return torch.cat([pooled, full[:, 0]], dim=1)

    def forward(self, flux: torch.Tensor, ivar: torch.Tensor, hidden: torch.Tensor,
                target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked reconstruction loss, loss of predicting each hidden pixel by the mean of
        its patches) - forward() so that DDP sees the training computation. ``target``: see
        :meth:`masked_loss`."""
        return self.masked_loss(flux, ivar, hidden, with_baseline=True, target=target)

    def reconstruction(self, flux: torch.Tensor, ivar: torch.Tensor, hidden: torch.Tensor,
                       target: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, standardised target x, scale), each pixel predicted from the encoder
        that did not see ``hidden``: prediction and x (batch, npix) in standardised units
        (the target, ``flux`` or ``target``, standardised as ``flux`` is, with the visible
        pixels' statistics: :meth:`standardise`), scale (batch, 1)."""
        out, x, scale = self.encode(flux, ivar, hidden, target)
        return self.unpatch(self.reconstruct(out)), x, scale

    def masked_loss(self, flux: torch.Tensor, ivar: torch.Tensor, hidden: torch.Tensor,
                    with_baseline: bool = False, target: torch.Tensor | None = None):
        """Mean squared error of the reconstruction over the hidden usable pixels (standardised
        flux units), pooled over the batch; with ``with_baseline`` also that of the baseline
        predicting each hidden pixel by the mean over its patches of their hidden usable
        pixels' true values (an oracle of the local level). With ``target`` (batch, npix),
        the flux that ``flux`` is a noisier copy of, the reconstruction is scored against it
        (denoising)."""
        pred, x, _ = self.reconstruction(flux, ivar, hidden, target)
        m = hidden & (ivar > 0)
        n = m.sum().clamp(min=1)
        loss = torch.where(m, (pred - x) ** 2, torch.zeros_like(x)).sum() / n
        if not with_baseline:
            return loss
        mp = self.patches(m.to(x.dtype))
        pm = (self.patches(x) * mp).sum(-1, keepdim=True) / mp.sum(-1, keepdim=True).clamp(
            min=1)
        has = (mp.sum(-1, keepdim=True) > 0).to(x.dtype)
        base_pred = (self.unpatch((pm * has).expand_as(mp))
                     / self.unpatch(has.expand_as(mp)).clamp(min=1e-6))
        base = torch.where(m, (base_pred - x) ** 2, torch.zeros_like(x)).sum() / n
        return loss, base.detach()

    def spectrum_scores(self, flux: torch.Tensor, ivar: torch.Tensor, n_views: int = 4,
                        span: int | None = None) -> torch.Tensor:
        """(batch,) out-of-domain score: the mean over all usable pixels of the excess squared
        reconstruction error, (pred - x)^2 - 1 / (ivar scale^2), in squared standardised flux
        units (scale: each spectrum's std, or ``flux_scale``);
        each pixel is hidden in exactly one of ``n_views`` deterministic views (spans of
        ``span`` pixels, default the pretraining's ``score_span``; every ``n_views``-th span
        hidden in a view), so every pixel is reconstructed without being seen. Near 0 for
        spectra the model knows (errors at the noise level), large for spectra unlike its
        training set; NaN for a spectrum without usable pixels."""
        b, npix = flux.shape
        span_id = torch.arange(npix, device=flux.device) // (span or self.score_span)
        num = torch.zeros(b, device=flux.device)
        den = torch.zeros(b, device=flux.device)
        for v in range(n_views):
            hidden = (span_id % n_views == v)[None, :].expand(b, npix)
            pred, x, scale = self.reconstruction(flux, ivar, hidden)
            m = hidden & (ivar > 0)
            noise = torch.where(ivar > 0, 1.0 / (ivar * scale ** 2).clamp(min=1e-12),
                                torch.zeros_like(x))
            num += torch.where(m, (pred - x) ** 2 - noise, torch.zeros_like(x)).float().sum(1)
            den += m.sum(1).float()
        return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def span_mask(batch: int, npix: int, fraction: float, span: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, npix) bool: ``k = max(1, round(fraction * npix / span))`` non-overlapping spans
    of ``span`` pixels at random places, so ``k * span / npix`` of the pixels (within half a
    span of ``fraction``) are hidden in every spectrum."""
    span = max(1, min(span, npix))
    k = max(1, min(round(fraction * npix / span), npix // span))
    free = npix - k * span                # pixels not in any span
    # k sorted positions among the free pixels; the i-th span starts after i earlier spans
    pos = torch.randint(0, free + 1, (batch, k), generator=generator).sort(dim=1).values
    starts = pos + torch.arange(k)[None, :] * span
    idx = (starts[..., None] + torch.arange(span)[None, None, :]).reshape(batch, -1)
    mask = torch.zeros(batch, npix, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask
