"""Recalibration of the candidates' predicted errors on the validation split.

Per candidate and label a scale ``s`` (and, only where the spread of z still depends on S/N
or on the predicted error, an S/N slope ``b`` and a floor ``f`` in the label's units) is
fitted so that

    z = (pred - ref) / sqrt((s err (snr / SNR_REF)^-b)^2 + f^2 + ref_err^2)

has unit spread on the validation stars (``ref_err`` NaN counts as 0; a spectrum without a
finite S/N > 0 gets the factor 1). The shape (slope, floor) is fitted on the robust sigma of z;
the scale is then set so that 68.27 % of the validation |z| lie within 1, i.e. the 1-sigma
coverage is nominal on validation by construction. The robust sigma alone is not enough: the
networks' residuals are more peaked than a Gaussian of the same robust sigma, and unit robust
sigma left the DESI test [Fe/H] coverage at 74 % (session 5). The recalibrated error of a
prediction is ``sqrt((s err (snr / SNR_REF)^-b)^2 + f^2)`` (:func:`apply`); evaluation applies
it before the test metrics, coverage and routing, and inference before routing, from the table
written as ``results/evaluation/calibration.ecsv``.

The slope is "needed" where, with the scale alone, the robust sigma of z differs between the
S/N quartiles of the validation stars by more than noise (the networks' predicted errors
grow too little towards low S/N: measured b = 0.3-0.6 for the spectrum MLPs on the embedded
default); the floor likewise between the quartiles of the predicted error. Each is fitted by
minimising the mean squared log robust sigma of z over its bins (keeping the overall robust
sigma at 1) over a grid, and kept only if it lowers that loss by more than twice its noise
level (about 0.6 / stars per bin for the biweight). The slope is fitted first, the floor with
the slope fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specbridge.evaluation.metrics import robust_sigma, robust_sigma_axis

CALIBRATION_COLUMNS = ("candidate", "label", "unit", "n", "scale", "floor", "snr_slope",
                       "val_z_sigma_before", "val_z_sigma_after")
SNR_REF = 30.0         # the S/N at which the slope's factor is 1
COVERAGE_1SIGMA = 0.6826894921370859   # P(|z| < 1) for a unit Gaussian
_LOG_S = (-6.0, 6.0)   # the scale is searched in [e^-6, e^6]
_BIN_MIN = 50          # stars per predicted-error bin for the floor test
_N_BINS = 4
_SLOPES = np.round(np.arange(-1.0, 1.0001, 0.05), 2)   # the S/N slopes tried


def snr_factor(snr: np.ndarray | None, slope: float) -> np.ndarray | float:
    """(n,) the error factor (snr / SNR_REF)^-slope; 1 where snr is not finite and > 0, or
    where ``snr`` is None or the slope 0."""
    if snr is None or slope == 0:
        return 1.0
    snr = np.asarray(snr, np.float64)
    ok = np.isfinite(snr) & (snr > 0)
    out = np.ones(snr.shape)
    out[ok] = (snr[ok] / SNR_REF) ** (-slope)
    return out


def _z_sigma(d: np.ndarray, e: np.ndarray, r2: np.ndarray, s: float, f: float) -> float:
    return robust_sigma(d / np.sqrt((s * e) ** 2 + f * f + r2))


def coverage_sigma_axis(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """The 68.27 % quantile of |z| along ``axis``: 1 exactly when 68.27 % of z lie within
    +-1 (a unit Gaussian's 1-sigma coverage)."""
    return np.quantile(np.abs(z), COVERAGE_1SIGMA, axis=axis)


def _scales_for(d: np.ndarray, e: np.ndarray, r2: np.ndarray, floors: np.ndarray,
                spread=robust_sigma_axis) -> np.ndarray:
    """(K,) the scale s (>= 0) with ``spread`` of z = 1 at each floor (K,) (the robust sigma,
    or :func:`coverage_sigma_axis`), by bisection in log s, all at once (the spread of z
    falls as s grows); ``e`` (n,) or (K, n), one row of errors per floor; NaN where even
    s -> 0 leaves it below 1 (the floor and the reference errors alone over-explain the
    scatter)."""
    f2 = np.asarray(floors, np.float64)[:, None] ** 2

    def zs(log_s):
        return spread(d / np.sqrt((np.exp(log_s)[:, None] * e) ** 2 + f2 + r2), axis=1)

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


def _quantile_bins(x: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """``n_bins`` boolean masks (n,) of the quantile bins of ``x`` (n,)."""
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    return [which == k for k in range(n_bins)]


def _fit_slope(d: np.ndarray, e: np.ndarray, r2: np.ndarray, snr: np.ndarray,
               n_bins: int) -> float:
    """The S/N slope b (0 unless needed, see the module) for residuals ``d``, errors ``e``,
    squared reference errors ``r2`` and S/N ``snr``, all (n,) with snr finite and > 0."""
    bins = _quantile_bins(snr, n_bins)
    s0 = float(_scales_for(d, e, r2, np.zeros(1))[0])
    if not np.isfinite(s0):
        return 0.0
    loss0 = _bin_loss(d, e, r2, s0, 0.0, bins)
    noise = 0.6 * n_bins / d.size
    if loss0 <= 2 * noise:
        return 0.0
    effs = np.stack([e * snr_factor(snr, b) for b in _SLOPES])
    scales = _scales_for(d, effs, r2, np.zeros(len(_SLOPES)))
    best_loss, best_b = loss0, 0.0
    for b, s, eff in zip(_SLOPES, scales, effs, strict=True):
        if np.isfinite(s):
            loss = _bin_loss(d, eff, r2, float(s), 0.0, bins)
            if loss < best_loss:
                best_loss, best_b = loss, float(b)
    return best_b if loss0 - best_loss > 2 * noise else 0.0


def fit(pred: np.ndarray, err: np.ndarray, ref: np.ndarray,
        ref_err: np.ndarray | None = None, snr: np.ndarray | None = None,
        n_floor: int = 41) -> dict[str, float]:
    """{'n', 'scale', 'floor', 'snr_slope', 'z_sigma_before', 'z_sigma_after'} for one
    candidate and label from (n,) arrays of its validation predictions, predicted errors,
    reference labels, their errors and the spectra's S/N (None: no slope). Scale 1, floor
    0, slope 0 where fewer than 3 stars have all finite."""
    pred, err, ref = (np.asarray(a, np.float64) for a in (pred, err, ref))
    r = np.zeros_like(ref) if ref_err is None else np.nan_to_num(np.asarray(ref_err, float))
    ok = np.isfinite(pred) & np.isfinite(ref) & np.isfinite(err) & (err > 0)
    d, e, r2 = pred[ok] - ref[ok], err[ok], r[ok] ** 2
    out = {"n": int(ok.sum()), "scale": 1.0, "floor": 0.0, "snr_slope": 0.0,
           "z_sigma_before": float("nan"), "z_sigma_after": float("nan")}
    if d.size < 3:
        return out
    out["z_sigma_before"] = _z_sigma(d, e, r2, 1.0, 0.0)
    n_bins = min(_N_BINS, d.size // _BIN_MIN)
    slope = 0.0
    if snr is not None and n_bins >= 2:
        sn = np.asarray(snr, np.float64)[ok]
        has = np.isfinite(sn) & (sn > 0)
        if has.sum() >= n_bins * _BIN_MIN:
            slope = _fit_slope(d[has], e[has], r2[has], sn[has], n_bins)
        e = e * snr_factor(sn, slope)
    s0 = float(_scales_for(d, e, r2, np.zeros(1))[0])
    best_s, best_f = (s0 if np.isfinite(s0) else np.exp(_LOG_S[0])), 0.0
    if n_bins >= 2 and np.isfinite(s0):
        bins = _quantile_bins(np.sqrt(e ** 2 + r2), n_bins)
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
    s68 = float(_scales_for(d, e, r2, np.array([best_f]), spread=coverage_sigma_axis)[0])
    if np.isfinite(s68):
        best_s = s68
    out.update(scale=float(best_s), floor=float(best_f), snr_slope=slope,
               z_sigma_after=_z_sigma(d, e, r2, best_s, best_f))
    return out


def fit_table(data: Mapping[str, np.ndarray], names: Sequence[str], labels: Sequence[str],
              split_code: int = 1):
    """Astropy Table (:data:`CALIBRATION_COLUMNS`) of every candidate and label, fitted on
    the rows of ``data`` (evaluate's arrays: 'split', 'ref', 'ref_err', '<name>/value',
    '<name>/error', and 'snr' if present) with split ``split_code`` (1: validation)."""
    from astropy.table import Table

    from specbridge.labels import unit

    m = data["split"] == split_code
    snr = data["snr"][m] if "snr" in data else None
    rows = []
    for name in names:
        for i, lab in enumerate(labels):
            got = fit(data[f"{name}/value"][m, i], data[f"{name}/error"][m, i],
                      data["ref"][m, i], data["ref_err"][m, i], snr)
            rows.append((name, lab, unit(lab), got["n"], got["scale"], got["floor"],
                         got["snr_slope"], got["z_sigma_before"], got["z_sigma_after"]))
    return Table(rows=rows, names=CALIBRATION_COLUMNS,
                 dtype=("U32", "U16", "U8", "i8", "f8", "f8", "f8", "f8", "f8"))


Calibration = tuple[float, float, float]   # (scale, floor, snr_slope)


def mapping(table: Any) -> dict[tuple[str, str], Calibration]:
    """{(candidate, label): (scale, floor, snr_slope)} of a calibration table (a table
    without the snr_slope column, written before it existed, gives slope 0)."""
    slope = "snr_slope" in table.colnames
    return {(str(r["candidate"]), str(r["label"])):
            (float(r["scale"]), float(r["floor"]), float(r["snr_slope"]) if slope else 0.0)
            for r in table}


def apply(error: np.ndarray, scale: float, floor: float, snr_slope: float = 0.0,
          snr: np.ndarray | None = None) -> np.ndarray:
    """The recalibrated error sqrt((scale error (snr / SNR_REF)^-snr_slope)^2 + floor^2),
    ``error`` and ``snr`` (n,) (NaN stays NaN; see :func:`snr_factor`)."""
    error = np.asarray(error, np.float64) * snr_factor(snr, snr_slope)
    return np.sqrt((scale * error) ** 2 + floor * floor)


def apply_all(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str],
              calib: Mapping[tuple[str, str], Sequence[float]] | None,
              snr: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``preds`` ({candidate: (value, error)}, each (n, L)) with every error recalibrated by
    ``calib`` (see :func:`mapping`; a pair not in it, or ``calib`` None, is left as is) at
    the spectra's S/N ``snr`` (n,)."""
    if not calib:
        return dict(preds)
    out = {}
    for name, (v, e) in preds.items():
        e = np.array(e, np.float64, copy=True)
        for i, lab in enumerate(labels):
            if (name, lab) in calib:
                e[:, i] = apply(e[:, i], *calib[(name, lab)], snr=snr)
        out[name] = (v, e)
    return out
