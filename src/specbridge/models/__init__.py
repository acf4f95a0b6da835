"""Models: the spectrum MLP, the SpecFormer foundation model, and the heads on its embeddings.

Adapters and LoRA wrapping (peft) arrive with the transfer stage (issue "Transfer to DESI").
"""

from specbridge.models.mlp import SpectrumMLP, gaussian_nll
from specbridge.models.specformer import SpecFormer

__all__ = ["SpecFormer", "SpectrumMLP", "gaussian_nll"]
