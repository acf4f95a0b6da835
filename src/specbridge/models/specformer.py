"""SpecFormer: a transformer foundation model for spectra (SpecCLIP conventions, docs/design.md).

Each spectrum (batch, npix) is standardised by its own mean and standard deviation and cut into
patches of ``patch_size`` pixels with stride ``patch_stride``; a leading token carries the
statistics (mean and log10 std); patches are embedded linearly, learned positions are added,
and a pre-LayerNorm transformer encoder (``d_model``, ``n_layers``, ``n_heads``) follows.
Self-supervised objective: contiguous chunks of patch tokens are replaced by a learned mask
token and reconstructed; the loss is the ivar-weighted squared error over the masked patches'
pixels, blind to pixels without information. The embedding is the mean over the output
patch tokens (d_model), standardised downstream with stored statistics.
"""

from __future__ import annotations

import torch
from torch import nn


def n_patches(npix: int, size: int, stride: int) -> int:
    return (npix - size) // stride + 1


class SpecFormer(nn.Module):
    def __init__(self, npix: int = 1462, patch_size: int = 20, patch_stride: int = 10,
                 d_model: int = 768, n_layers: int = 6, n_heads: int = 6,
                 dropout: float = 0.0):
        super().__init__()
        self.npix, self.size, self.stride = npix, patch_size, patch_stride
        self.n_patches = n_patches(npix, patch_size, patch_stride)
        self.patch_embed = nn.Linear(patch_size, d_model)
        self.stats_embed = nn.Linear(2, d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_patches + 1, d_model))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.reconstruct = nn.Linear(d_model, patch_size)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def standardise(self, flux: torch.Tensor, ivar: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-spectrum (ivar > 0 pixels) mean/std: returns (x, stats (batch, 2), scale)."""
        w = (ivar > 0).to(flux.dtype)
        n = w.sum(1, keepdim=True).clamp(min=1)
        mu = (flux * w).sum(1, keepdim=True) / n
        sd = (((flux - mu) ** 2 * w).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
        x = torch.where(ivar > 0, (flux - mu) / sd, torch.zeros_like(flux))
        stats = torch.cat([mu, torch.log10(sd)], dim=1)
        return x, stats, sd

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, npix) -> (batch, n_patches, patch_size)."""
        return x.unfold(1, self.size, self.stride)

    def encode(self, flux: torch.Tensor, ivar: torch.Tensor,
               token_mask: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output tokens (batch, n_patches, d_model), the standardised input (batch, npix) and
        each spectrum's std (batch, 1).

        ``token_mask`` (batch, n_patches) bool: patches replaced by the mask token.
        """
        x, stats, sd = self.standardise(flux, ivar)
        tok = self.patch_embed(self.patches(x))
        if token_mask is not None:
            tok = torch.where(token_mask[..., None], self.mask_token.expand_as(tok), tok)
        tok = torch.cat([self.stats_embed(stats)[:, None, :], tok], dim=1) + self.pos
        out = self.norm(self.encoder(tok))
        return out[:, 1:], x, sd

    def embed(self, flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) mean over output patch tokens (not standardised here)."""
        out, _, _ = self.encode(flux, ivar)
        return out.mean(dim=1)

    def forward(self, flux: torch.Tensor, ivar: torch.Tensor, token_mask: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked reconstruction loss, loss of predicting each masked patch by its own mean)
        - forward() so that DDP sees the training computation."""
        return self.masked_loss(flux, ivar, token_mask, with_baseline=True)

    def masked_loss(self, flux: torch.Tensor, ivar: torch.Tensor, token_mask: torch.Tensor,
                    with_baseline: bool = False):
        """ivar-weighted MSE of the reconstruction over the masked patches' usable pixels.

        Weights are ivar * sd^2 (the inverse variance of the standardised flux), normalised to
        mean 1 over the counted pixels, so the loss is comparable between spectra.
        """
        out, x, sd = self.encode(flux, ivar, token_mask)
        pred = self.reconstruct(out)                       # (batch, n_patches, size)
        w = self.patches(ivar * sd ** 2)                   # inverse variance, standardised
        m = token_mask[..., None] & (w > 0)
        w = torch.where(m, w, torch.zeros_like(w))
        w = w / w[m].mean().clamp(min=1e-12) if m.any() else w
        target = self.patches(x)
        n = m.sum().clamp(min=1)
        loss = (((pred - target) ** 2) * w).sum() / n
        if not with_baseline:
            return loss
        # the baseline: each masked patch predicted by its own (weighted) mean
        pm = (target * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1e-12)
        base = (((pm - target) ** 2) * w).sum() / n
        return loss, base.detach()


def chunk_mask(batch: int, n_tokens: int, fraction: float, chunk: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n_tokens) bool: contiguous chunks of ``chunk`` tokens masked until about
    ``fraction`` of the tokens are masked (at least one chunk per spectrum)."""
    n_chunks = max(1, round(fraction * n_tokens / chunk))
    starts = torch.randint(0, max(1, n_tokens - chunk + 1), (batch, n_chunks),
                           generator=generator)
    idx = starts[..., None] + torch.arange(chunk)[None, None, :]
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool)
    mask.scatter_(1, idx.reshape(batch, -1).clamp(max=n_tokens - 1), True)
    return mask
