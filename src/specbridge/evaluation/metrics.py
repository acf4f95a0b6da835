"""Scatter and bias statistics of residuals."""

from __future__ import annotations

import numpy as np


def robust_sigma(dy: np.ndarray, iterations: int = 10, c: float = 6.0) -> float:
    """Tukey-biweight scale of residuals dy (1-D) about their median (ANCHORS.md).

    Starts from s = MAD / 0.6745 and iterates s <- sqrt(n sum d^2 (1-u^2)^4) /
    |sum (1-u^2)(1-5u^2)| with u = d / (c s), points with |u| >= 1 getting no weight, until it
    settles (at most ``iterations`` times). For Gaussian residuals it returns their sigma.
    Returns NaN for fewer than 3 finite values, 0 when more than half the values are equal.
    """
    d = np.asarray(dy, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 3:
        return float("nan")
    d = d - np.median(d)
    s = np.median(np.abs(d)) / 0.6745
    if s == 0:
        return 0.0
    for _ in range(iterations):
        u = d / (c * s)
        m = np.abs(u) < 1
        num = np.sqrt(d.size * np.sum((d[m] ** 2) * (1 - u[m] ** 2) ** 4))
        den = np.abs(np.sum((1 - u[m] ** 2) * (1 - 5 * u[m] ** 2)))
        if den == 0:
            return float("nan")
        new = num / den
        if abs(new - s) <= 1e-10 * s:
            s = new
            break
        s = new
    return float(s)
