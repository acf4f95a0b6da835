"""The spectrum MLP (docs/design.md): Linear -> BatchNorm -> ReLU -> Dropout blocks, then a head
giving, per label, a mean and a log-variance (trained with a Gaussian negative log-likelihood
that includes the reference label's own error)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SpectrumMLP(nn.Module):
    """(batch, n_in) inputs -> (batch, n_labels) means and (batch, n_labels) log-variances.

    With n_in = 1462, hidden = (1024, 512, 64) and one label this has 2,063,555 trainable
    parameters (the paper's ~2.06 M); the head adds 65 per extra label for each of mean and
    log-variance. Labels are predicted in standardised units; the caller keeps the scaling.
    """

    def __init__(self, n_in: int = 1462, hidden: Sequence[int] = (1024, 512, 64),
                 n_labels: int = 1, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.backbone = nn.Sequential(*layers)
        self.mean = nn.Linear(width, n_labels)
        self.log_var = nn.Linear(width, n_labels)
        self.n_labels = n_labels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, hidden[-1]) last hidden layer."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.mean(h), self.log_var(h).clamp(-12.0, 8.0)


def gaussian_nll_sum(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor,
                     target_err: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed Gaussian negative log-likelihood over the finite targets, and their number
    (see gaussian_nll)."""
    ok = torch.isfinite(target)
    var = log_var.exp()
    if target_err is not None:
        var = var + torch.nan_to_num(target_err, nan=0.0) ** 2
    t = torch.where(ok, target, mean.detach())
    nll = 0.5 * (torch.log(var) + (mean - t) ** 2 / var)
    return (nll * ok).sum(), int(ok.sum())


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor,
                 target_err: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood over finite targets.

    All tensors (batch, n_labels) in the same (standardised) units. The variance is the model's
    exp(log_var) plus the reference label's own variance ``target_err**2`` (NaN errors count as
    0); entries with a NaN target are ignored (a star may lack one label).
    """
    total, n = gaussian_nll_sum(mean, log_var, target, target_err)
    return total / max(n, 1)
