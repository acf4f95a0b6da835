"""Batch normalisation over the global batch of a torch.distributed job on any device.

torch's SyncBatchNorm runs only on GPUs; this BatchNorm1d subclass all-reduces the batch sums
(with autograd, through torch.distributed.nn) on CPU too, so that a model trained on W ranks
with batches of B/W sees exactly the statistics of one rank with batch B.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d whose training statistics span all ranks (same parameters/buffers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        # sums in float64: E[x^2] - E[x]^2 in float32 would lose digits against torch's BN
        xd = x.double()
        n_local = torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)
        stats = torch.cat([xd.sum(0), (xd * xd).sum(0), n_local])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 0.1
            unbiased = var * n / (n - 1).clamp(min=1)
            self.running_mean.mul_(1 - m).add_(m * mean.to(x.dtype))
            self.running_var.mul_(1 - m).add_(m * unbiased.to(x.dtype))
        y = ((xd - mean) / torch.sqrt(var + self.eps)).to(x.dtype)
        return y * self.weight + self.bias if self.affine else y


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm1d in ``module`` by GlobalBatchNorm1d (state kept), in place.
    Frozen affine parameters (requires_grad False) stay frozen."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum,
                                    child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_global_batchnorm(child)
    return module
