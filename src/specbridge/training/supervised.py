"""Pieces of supervised training shared by pretraining and fine-tuning: the Gaussian NLL loss
on a batch, predictions over a LabelledShards split, and the validation loss."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from specbridge.models.mlp import gaussian_nll_sum
from specbridge.training.augment import SNR_MIN, degrade_snr
from specbridge.training.data import Batch, LabelledShards, network_input


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def nll_loss_sum(device: torch.device, augment: tuple[float, float] = (0.0, SNR_MIN),
                 ) -> Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]:
    """loss_sum for the training loop: summed Gaussian NLL of a batch and its term count.
    ``augment`` = (fraction, snr_min): that fraction of each batch's spectra is seen
    degraded in S/N (:func:`specbridge.training.augment.degrade_snr`; the batches carry flux
    and ivar, or for embeddings ``x_degraded``, the embeddings of degraded copies)."""

    def loss_sum(net: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        if augment[0] > 0 and batch.x_degraded is None:  # spectra: degrade, then the input
            x = network_input(*degrade_snr(to_tensor(batch.flux, device),
                                           to_tensor(batch.ivar, device), *augment))
        else:
            x = to_tensor(batch.x, device)
            if augment[0] > 0:  # embeddings: those of degraded copies for the picked rows
                pick = (torch.rand(x.shape[0]) < augment[0]).to(device)[:, None]
                x = torch.where(pick, to_tensor(batch.x_degraded, device), x)
        mu, lv = net(x)
        return gaussian_nll_sum(mu.float(), lv.float(), to_tensor(batch.y, device),
                                to_tensor(batch.y_err, device))

    return loss_sum


def predict_split(net: nn.Module, ds: LabelledShards, mean: np.ndarray, std: np.ndarray,
                  device: torch.device, seed: int = 0, batch_size: int = 1024
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised (mean, log_var, label, label_error), each (n, n_labels), for every row of
    ``ds`` in a fixed order."""
    out: list[list[np.ndarray]] = [[], [], [], []]
    for b in ds.batches(0, batch_size, seed, mean=mean, std=std, shuffle=False,
                        drop_last=False):
        mu, lv = net(to_tensor(b.x, device))
        for k, a in enumerate((mu.float().cpu().numpy(), lv.float().cpu().numpy(), b.y,
                               b.y_err)):
            out[k].append(a)
    n = len(mean)
    return tuple(np.concatenate(o) if o else np.zeros((0, n), np.float32)
                 for o in out)  # type: ignore[return-value]


def robust_sigma_per_label(mu: np.ndarray, y: np.ndarray, std: np.ndarray,
                           labels: list[str]) -> dict[str, float]:
    """Robust sigma of (prediction - label) per label in physical units; mu, y: (n, n_labels)
    standardised, std: (n_labels,) the standardisation scale."""
    from specbridge.evaluation.metrics import robust_sigma

    return {lab: robust_sigma((mu[:, i] - y[:, i]) * std[i]) for i, lab in enumerate(labels)}


def mean_nll(mu: np.ndarray, log_var: np.ndarray, y: np.ndarray, y_err: np.ndarray) -> float:
    """Mean Gaussian NLL over finite labels (all arrays (n, n_labels), standardised)."""
    s, n = gaussian_nll_sum(torch.from_numpy(mu), torch.from_numpy(log_var),
                            torch.from_numpy(y), torch.from_numpy(y_err))
    return float(s) / max(n, 1)
