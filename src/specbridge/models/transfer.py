"""Transfer of a pretrained SpectrumMLP to DESI: zero-shot, residual-head adapter, LoRA (peft)
and full fine-tuning, and the servable form of each candidate (what inference loads).

A candidate checkpoint (kind ``candidate`` of :mod:`specbridge.models.checkpoint`) holds the
architecture, the servable state dict (LoRA merged into the weights), the pretrained label
scaling and the training history; ``load_candidate`` rebuilds the module from it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specbridge.models.mlp import SpectrumMLP
from specbridge.models.specformer import SpecFormer

STRATEGIES = ("zeroshot", "adapter", "lora", "full")
SPECFORMER_LORA_LAYERS = ("qkv", "proj", "fc1", "fc2")


class ResidualAdapter(nn.Module):
    """A frozen SpectrumMLP plus a small residual network on its last hidden layer.

    The adapter (hidden[-1] -> ``width`` -> 2 n_labels, ReLU) adds corrections to the mean and
    the log-variance. Its last layer starts at zero, so before training the adapted model is
    exactly the pretrained one. (batch, n_in) -> ((batch, n_labels), (batch, n_labels)).
    """

    def __init__(self, base: SpectrumMLP, width: int = 64):
        super().__init__()
        self.base = base
        n_feat = base.mean.in_features
        self.correction = nn.Sequential(nn.Linear(n_feat, width), nn.ReLU(),
                                        nn.Linear(width, 2 * base.n_labels))
        nn.init.zeros_(self.correction[2].weight)
        nn.init.zeros_(self.correction[2].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.base.features(x)
        d = self.correction(h)
        n = self.base.n_labels
        mean = self.base.mean(h) + d[:, :n]
        log_var = (self.base.log_var(h) + d[:, n:]).clamp(-12.0, 8.0)
        return mean, log_var


class SpecFormerRegressor(nn.Module):
    """The SpecFormer and the embedding MLP as one network, for LoRA on the SpecFormer itself.

    (batch, 2, npix) [flux, ivar] -> SpecFormer embedding (:meth:`SpecFormer.embed`),
    standardised with the statistics stored at pretraining -> embedding MLP -> (mean, log_var),
    each (batch, n_labels).
    """

    def __init__(self, specformer: SpecFormer, head: SpectrumMLP, embed_mean, embed_std):
        super().__init__()
        self.specformer = specformer
        self.head = head
        self.register_buffer("embed_mean", torch.as_tensor(embed_mean, dtype=torch.float32))
        self.register_buffer("embed_std", torch.as_tensor(embed_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.specformer.embed(x[:, 0], x[:, 1])
        return self.head((e - self.embed_mean) / self.embed_std)


class TransferModel(nn.Module):
    """The model being fine-tuned; keeps the BatchNorm layers of a frozen backbone in eval mode
    (running statistics from pretraining) even while the loop calls ``train()``."""

    def __init__(self, net: nn.Module, strategy: str):
        super().__init__()
        self.net = net
        self.strategy = strategy
        self.freeze_batchnorm = strategy != "full"

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if self.freeze_batchnorm:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)


def lora_targets(base: SpectrumMLP | SpecFormerRegressor, target_modules: Sequence[str],
                 train_output_layer: bool) -> list[str]:
    """Module names LoRA wraps. ``linear`` stands for every nn.Linear of the backbone, and of
    the heads too when the output layer is not trained in full; other entries are names."""
    names: list[str] = []
    if isinstance(base, SpecFormerRegressor):
        # every block's attention (qkv, proj) and feed-forward (fc1, fc2) projection
        return sorted(n for n, m in base.named_modules() if isinstance(m, nn.Linear)
                      and n.startswith("specformer.blocks.") and n.rsplit(".", 1)[-1]
                      in SPECFORMER_LORA_LAYERS)
    heads = {"mean", "log_var"}
    for t in target_modules:
        if t == "linear":
            names += [n for n, m in base.named_modules() if isinstance(m, nn.Linear)
                      and (n not in heads or not train_output_layer)]
        else:
            if not isinstance(dict(base.named_modules()).get(t), nn.Linear):
                raise ValueError(f"LoRA target {t!r} is not a Linear layer of the model")
            names.append(t)
    return sorted(set(names))


def build_transfer_model(base: SpectrumMLP | SpecFormerRegressor, strategy: str,
                         adapter_width: int = 64, lora: dict[str, Any] | None = None
                         ) -> TransferModel:
    """Wrap a pretrained SpectrumMLP for ``strategy``; only what the strategy trains has
    ``requires_grad``: nothing (zeroshot), the adapter (adapter), the LoRA matrices plus
    optionally the output heads (lora), everything (full)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    if strategy in ("zeroshot", "adapter"):
        for p in base.parameters():
            p.requires_grad_(False)
    if strategy == "adapter":
        return TransferModel(ResidualAdapter(base, adapter_width), strategy)
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        lora = lora or {}
        train_out = lora.get("train_output_layer", True)
        if isinstance(base, SpecFormerRegressor):
            saved = ["head"] if train_out else None  # the embedding MLP on top
        else:
            saved = ["mean", "log_var"] if train_out else None
        cfg = LoraConfig(r=lora.get("rank", 8), lora_alpha=lora.get("alpha", 16),
                         lora_dropout=lora.get("dropout", 0.0), bias="none",
                         target_modules=lora_targets(base, lora.get("target_modules",
                                                                    ["linear"]), train_out),
                         modules_to_save=saved)
        return TransferModel(get_peft_model(base, cfg), strategy)
    return TransferModel(base, strategy)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def servable(model: TransferModel) -> nn.Module:
    """The inference module: LoRA merged into the base weights, the adapter kept whole."""
    net = model.net
    if model.strategy == "lora":
        net = net.merge_and_unload()
    return net


def architecture(base_extra: dict[str, Any], strategy: str, adapter_width: int) -> dict:
    """What load_candidate needs to rebuild the servable module."""
    return {"n_in": int(base_extra["npix"]), "hidden": list(base_extra["hidden"]),
            "n_labels": len(base_extra["labels"]), "dropout": float(base_extra["dropout"]),
            "adapter_width": adapter_width if strategy == "adapter" else None}


def specformer_architecture(sf_extra: dict[str, Any], head_extra: dict[str, Any]) -> dict:
    """Architecture of the SpecFormer + embedding-MLP candidate."""
    keys = ("npix", "patch_size", "patch_stride", "d_model", "n_layers", "n_heads")
    sf = {k: int(sf_extra[k]) for k in keys}
    sf["pool_regions"] = int(sf_extra.get("pool_regions", 1))
    sf["embed_stats_token"] = bool(sf_extra.get("embed_stats_token", False))
    scale = sf_extra.get("flux_scale")
    sf["flux_scale"] = None if scale is None else float(scale)
    return {"kind": "specformer", "specformer": sf,
            "head": architecture(head_extra, "lora", 0),
            "embed_dim": (sf["pool_regions"] + sf["embed_stats_token"]) * sf["d_model"]}


def build_servable(arch: dict[str, Any]) -> nn.Module:
    """An untrained module of the servable architecture ``arch`` (see
    :func:`specbridge.models.checkpoint.build_model`, kind ``candidate``)."""
    from specbridge.models.checkpoint import build_model

    return build_model("candidate", arch)


def load_candidate(path: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """(module in eval mode on ``device``, checkpoint metadata plus ``arch``) of a fine-tuned
    candidate checkpoint; UserError for a missing file or any other kind of checkpoint."""
    from specbridge.models.checkpoint import load_model

    net, ckpt = load_model(path, ("candidate",), device)
    return net, {**ckpt.meta, "arch": ckpt.arch}
