"""Calibration on a few real labels: how well a handful of real stars with reference labels pins
down a model's offset on real spectra.

For a real labelled set and a label, ``n_cal`` stars are drawn at random (without replacement,
by star), their median residual (prediction - reference) is taken as the offset, and the
offset is subtracted from the predictions of the other stars; the held-out stars' bias and
robust sigma are recorded. Repeated over ``n_draw`` draws, this gives the distribution of the
bias left after calibrating on ``n_cal`` stars (its median and the 16th-84th percentile range)
next to the bias before. The residuals are per spectrum; a star's spectra are drawn together,
so a star never calibrates itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from specbridge.evaluation.metrics import robust_sigma

SIZES = (5, 10, 20)
N_DRAW = 200

# name, dtype, description
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("set", "U32", "real_validation set"),
    ("label", "U16", "label name"),
    ("unit", "U8", "unit of every bias and sigma column"),
    ("n_cal", "i8", "stars the offset is taken from"),
    ("n_stars", "i8", "stars with a residual in the set"),
    ("n_draw", "i8", "random draws of the calibration stars"),
    ("bias_before", "f8", "median residual of all stars, uncalibrated"),
    ("sigma_before", "f8", "robust sigma of all residuals, uncalibrated"),
    ("bias_after", "f8", "median over draws of the held-out stars' median residual after "
                         "subtracting the offset"),
    ("bias_after_lo", "f8", "16th percentile over draws of that bias"),
    ("bias_after_hi", "f8", "84th percentile over draws of that bias"),
    ("abs_bias_after", "f8", "median over draws of |held-out bias|: the typical offset left"),
    ("sigma_after", "f8", "median over draws of the held-out robust sigma"),
)


def draws(resid: np.ndarray, stars: np.ndarray, n_cal: int, n_draw: int = N_DRAW,
          seed: int = 0) -> dict[str, np.ndarray]:
    """Per draw (n_draw,): the offset from ``n_cal`` random stars and the held-out stars'
    bias and robust sigma after subtracting it. ``resid`` (n,) prediction - reference per
    spectrum (finite), ``stars`` (n,) star identifiers. Empty arrays when fewer than
    ``n_cal + 3`` stars."""
    uniq, inverse = np.unique(stars, return_inverse=True)
    out = {k: np.empty(0) for k in ("offset", "bias", "sigma")}
    if uniq.size < n_cal + 3:
        return out
    rng = np.random.default_rng(seed)
    offset, bias, sigma = (np.empty(n_draw) for _ in range(3))
    for k in range(n_draw):
        cal = np.zeros(uniq.size, bool)
        cal[rng.choice(uniq.size, n_cal, replace=False)] = True
        in_cal = cal[inverse]
        offset[k] = np.median(resid[in_cal])
        held = resid[~in_cal] - offset[k]
        bias[k], sigma[k] = np.median(held), robust_sigma(held)
    return {"offset": offset, "bias": bias, "sigma": sigma}


def set_rows(name: str, resid_by_label: dict[str, tuple[np.ndarray, str]],
             stars: np.ndarray, sizes: Sequence[int] = SIZES, n_draw: int = N_DRAW,
             seed: int = 0) -> list[dict[str, Any]]:
    """Rows (:data:`COLUMNS`) of one real set: ``resid_by_label`` maps a label to its (n,)
    residuals (NaN: none) and unit; ``stars`` (n,) star identifiers. A size that leaves fewer
    than 3 held-out stars is skipped."""
    rows = []
    for lab, (resid, unit) in resid_by_label.items():
        ok = np.isfinite(resid)
        r, s = resid[ok], stars[ok]
        n_stars = int(np.unique(s).size)
        for n_cal in sizes:
            got = draws(r, s, n_cal, n_draw, seed)
            if not got["bias"].size:
                continue
            lo, mid, hi = np.percentile(got["bias"], [16, 50, 84])
            rows.append({"set": name, "label": lab, "unit": unit, "n_cal": n_cal,
                         "n_stars": n_stars, "n_draw": n_draw,
                         "bias_before": float(np.median(r)),
                         "sigma_before": float(robust_sigma(r)),
                         "bias_after": float(mid), "bias_after_lo": float(lo),
                         "bias_after_hi": float(hi),
                         "abs_bias_after": float(np.median(np.abs(got["bias"]))),
                         "sigma_after": float(np.median(got["sigma"]))})
    return rows
