"""Scatter and bias statistics of residuals."""

from __future__ import annotations

import numpy as np


def robust_sigma(dy: np.ndarray, iterations: int = 10, c: float = 6.0) -> float:
    """Tukey-biweight scale of residuals dy (1-D) about their median: the robust sigma that
    the LAMOST -> DESI transfer and SpecCLIP papers report (docs/design.md).

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


METRIC_COLUMNS = ("n", "robust_sigma", "bias", "mad", "outlier_fraction", "within_1sigma",
                  "z_robust_sigma")


def residual_metrics(pred: np.ndarray, pred_err: np.ndarray, ref: np.ndarray,
                     ref_err: np.ndarray | None = None) -> dict[str, float]:
    """Statistics of residuals pred - ref, all arrays (n,) in the label's units.

    n: pairs with finite pred and ref; robust_sigma: Tukey biweight (robust_sigma); bias:
    median residual; mad: median |residual - bias|; outlier_fraction: share with
    |residual - bias| > 3 robust_sigma; within_1sigma: share with |residual| < sigma_tot, where
    sigma_tot = sqrt(pred_err^2 + ref_err^2) (0.683 when calibrated); z_robust_sigma: robust
    sigma of residual / sigma_tot (1 when calibrated).
    """
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    ok = np.isfinite(pred) & np.isfinite(ref)
    d = pred[ok] - ref[ok]
    out = dict.fromkeys(METRIC_COLUMNS, float("nan"))
    out["n"] = int(d.size)
    if d.size == 0:
        return out
    s = robust_sigma(d)
    bias = float(np.median(d))
    out.update(robust_sigma=s, bias=bias, mad=float(np.median(np.abs(d - bias))))
    if np.isfinite(s):
        out["outlier_fraction"] = float(np.mean(np.abs(d - bias) > 3 * s))
    var = np.asarray(pred_err, np.float64)[ok] ** 2
    if ref_err is not None:
        var = var + np.nan_to_num(np.asarray(ref_err, np.float64)[ok]) ** 2
    tot = np.sqrt(var)
    good = np.isfinite(tot) & (tot > 0)
    if good.any():
        z = d[good] / tot[good]
        out["within_1sigma"] = float(np.mean(np.abs(z) < 1))
        out["z_robust_sigma"] = robust_sigma(z)
    return out
