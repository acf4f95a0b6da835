"""Metrics (robust sigma, bias, outlier rate, coverage) and per-regime model selection."""

from specbridge.evaluation.metrics import robust_sigma

__all__ = ["robust_sigma"]
