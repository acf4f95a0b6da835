"""Models: the spectrum MLP, the SpecFormer foundation model, the transfer wrappers
(:mod:`specbridge.models.transfer`) and the one checkpoint layout
(:mod:`specbridge.models.checkpoint`)."""

from specbridge.models.checkpoint import (
    Checkpoint,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from specbridge.models.mlp import SpectrumMLP, gaussian_nll
from specbridge.models.specformer import SpecFormer

__all__ = ["Checkpoint", "SpecFormer", "SpectrumMLP", "build_model", "gaussian_nll",
           "load_checkpoint", "load_model", "save_checkpoint"]
