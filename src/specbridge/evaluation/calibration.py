"""Recalibration of the candidates' predicted errors on the validation split.

Per candidate and label a scale ``s`` (and, only where the spread of z still depends on the
predicted error, a floor ``f`` in the label's units) is fitted so that

    z = (pred - ref) / sqrt((s err)^2 + f^2 + ref_err^2)

has robust sigma 1 on the validation stars (``ref_err`` NaN counts as 0). The recalibrated
error of a prediction is ``sqrt((s err)^2 + f^2)`` (:func:`apply`); evaluation applies it
before the test metrics, coverage and routing, and inference before routing, from the table
written as ``results/evaluation/calibration.ecsv``.

The floor is "needed" where, with the scale alone, the robust sigma of z differs between the
quantile bins of the predicted error by more than noise: the fit then minimises the mean
squared log robust sigma of z over those bins (keeping the overall robust sigma at 1) over a
grid of floors, and keeps the floor only if it lowers that loss by more than twice its noise
level (about 0.6 / stars per bin for the biweight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specbridge.evaluation.metrics import robust_sigma, robust_sigma_axis

CALIBRATION_COLUMNS = ("candidate", "label", "unit", "n", "scale", "floor",
                       "val_z_sigma_before", "val_z_sigma_after")
_LOG_S = (-6.0, 6.0)   # the scale is searched in [e^-6, e^6]
_BIN_MIN = 50          # stars per predicted-error bin for the floor test
_N_BINS = 4


def _z_sigma(d: np.ndarray, e: np.ndarray, r2: np.ndarray, s: float, f: float) -> float:
    return robust_sigma(d / np.sqrt((s * e) ** 2 + f * f + r2))


def _scales_for(d: np.ndarray, e: np.ndarray, r2: np.ndarray, floors: np.ndarray
                ) -> np.ndarray:
    """(K,) the scale s (>= 0) with robust sigma of z = 1 at each floor, by bisection in
    log s, all floors at once (the robust sigma of z falls as s grows); NaN where even
    s -> 0 leaves it below 1 (the floor and the reference errors alone over-explain the
    scatter)."""
    f2 = np.asarray(floors, np.float64)[:, None] ** 2

    def zs(log_s):
        return robust_sigma_axis(d / np.sqrt((np.exp(log_s)[:, None] * e) ** 2 + f2 + r2),
                                 axis=1)

    k = f2.shape[0]
    lo, hi = np.full(k, _LOG_S[0]), np.full(k, _LOG_S[1])
    feasible = zs(lo) >= 1
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        above = zs(mid) > 1
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
        if (hi - lo).max() < 1e-6:
            break
    return np.where(feasible, np.exp(0.5 * (lo + hi)), np.nan)


def _bin_loss(d, e, r2, s, f, bins) -> float:
    """Mean squared log robust sigma of z over the predicted-error bins."""
    out = []
    for m in bins:
        zs = _z_sigma(d[m], e[m], r2[m], s, f)
        out.append(np.log(zs) ** 2 if zs > 0 and np.isfinite(zs) else np.inf)
    return float(np.mean(out))


def fit(pred: np.ndarray, err: np.ndarray, ref: np.ndarray,
        ref_err: np.ndarray | None = None, n_floor: int = 41) -> dict[str, float]:
    """{'n', 'scale', 'floor', 'z_sigma_before', 'z_sigma_after'} for one candidate and
    label from (n,) arrays of its validation predictions, predicted errors, reference labels
    and their errors. Scale 1, floor 0 where fewer than 3 stars have all finite."""
    pred, err, ref = (np.asarray(a, np.float64) for a in (pred, err, ref))
    r = np.zeros_like(ref) if ref_err is None else np.nan_to_num(np.asarray(ref_err, float))
    ok = np.isfinite(pred) & np.isfinite(ref) & np.isfinite(err) & (err > 0)
    d, e, r2 = pred[ok] - ref[ok], err[ok], r[ok] ** 2
    out = {"n": int(ok.sum()), "scale": 1.0, "floor": 0.0, "z_sigma_before": float("nan"),
           "z_sigma_after": float("nan")}
    if d.size < 3:
        return out
    out["z_sigma_before"] = _z_sigma(d, e, r2, 1.0, 0.0)
    s0 = float(_scales_for(d, e, r2, np.zeros(1))[0])
    best_s, best_f = (s0 if np.isfinite(s0) else np.exp(_LOG_S[0])), 0.0
    n_bins = min(_N_BINS, d.size // _BIN_MIN)
    if n_bins >= 2 and np.isfinite(s0):
        tot = np.sqrt(e ** 2 + r2)
        edges = np.quantile(tot, np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(edges, tot, side="right") - 1, 0, n_bins - 1)
        bins = [which == k for k in range(n_bins)]
        loss0 = _bin_loss(d, e, r2, s0, 0.0, bins)
        noise = 0.6 * n_bins / d.size
        if loss0 > 2 * noise:
            floors = np.linspace(0, robust_sigma(d), n_floor)[1:]
            scales = _scales_for(d, e, r2, floors)
            best_loss = loss0
            for f, s in zip(floors, scales, strict=True):
                if not np.isfinite(s):
                    continue  # this floor over-explains the scatter
                loss = _bin_loss(d, e, r2, float(s), float(f), bins)
                if loss < best_loss:
                    best_loss, best_s, best_f = loss, float(s), float(f)
            if loss0 - best_loss <= 2 * noise:
                best_s, best_f = s0, 0.0
    out.update(scale=float(best_s), floor=float(best_f),
               z_sigma_after=_z_sigma(d, e, r2, best_s, best_f))
    return out


def fit_table(data: Mapping[str, np.ndarray], names: Sequence[str], labels: Sequence[str],
              split_code: int = 1):
    """Astropy Table (:data:`CALIBRATION_COLUMNS`) of every candidate and label, fitted on
    the rows of ``data`` (evaluate's arrays: 'split', 'ref', 'ref_err', '<name>/value',
    '<name>/error') with split ``split_code`` (1: validation)."""
    from astropy.table import Table

    from specbridge.labels import unit

    m = data["split"] == split_code
    rows = []
    for name in names:
        for i, lab in enumerate(labels):
            got = fit(data[f"{name}/value"][m, i], data[f"{name}/error"][m, i],
                      data["ref"][m, i], data["ref_err"][m, i])
            rows.append((name, lab, unit(lab), got["n"], got["scale"], got["floor"],
                         got["z_sigma_before"], got["z_sigma_after"]))
    return Table(rows=rows, names=CALIBRATION_COLUMNS,
                 dtype=("U32", "U16", "U8", "i8", "f8", "f8", "f8", "f8"))


def mapping(table: Any) -> dict[tuple[str, str], tuple[float, float]]:
    """{(candidate, label): (scale, floor)} of a calibration table."""
    return {(str(r["candidate"]), str(r["label"])): (float(r["scale"]), float(r["floor"]))
            for r in table}


def apply(error: np.ndarray, scale: float, floor: float) -> np.ndarray:
    """The recalibrated error sqrt((scale error)^2 + floor^2) (NaN stays NaN)."""
    error = np.asarray(error, np.float64)
    return np.sqrt((scale * error) ** 2 + floor * floor)


def apply_all(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str],
              calib: Mapping[tuple[str, str], tuple[float, float]] | None
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``preds`` ({candidate: (value, error)}, each (n, L)) with every error recalibrated by
    ``calib`` (see :func:`mapping`; a pair not in it, or ``calib`` None, is left as is)."""
    if not calib:
        return dict(preds)
    out = {}
    for name, (v, e) in preds.items():
        e = np.array(e, np.float64, copy=True)
        for i, lab in enumerate(labels):
            if (name, lab) in calib:
                e[:, i] = apply(e[:, i], *calib[(name, lab)])
        out[name] = (v, e)
    return out
