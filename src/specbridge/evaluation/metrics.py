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


def total_error(dy: np.ndarray) -> float:
    """sqrt(bias^2 + robust_sigma^2) of residuals dy (1-D; bias their median): the typical
    error including the offset, which the selection ranks candidates by (a candidate with a
    small scatter about a large offset is not a good one). NaN without finite values."""
    dy = np.asarray(dy, np.float64)
    dy = dy[np.isfinite(dy)]
    if dy.size == 0:
        return float("nan")
    return float(np.hypot(np.median(dy), robust_sigma(dy)))


def robust_sigma_axis(dy: np.ndarray, axis: int = -1, iterations: int = 10, c: float = 6.0,
                      chunk: int = 1 << 20) -> np.ndarray:
    """:func:`robust_sigma` of every 1-D lane of ``dy`` along ``axis``, vectorised with numpy:
    the same start, iteration and stopping rule lane by lane (a lane that has settled stops
    changing), so it agrees with :func:`robust_sigma` applied lane by lane to floating-point
    rounding (~1e-15 relative). Non-finite values are left out of their lane, so NaN pads
    lanes of different lengths.

    Returns an array of ``dy``'s shape without ``axis``. Lanes are worked through in blocks
    of about ``chunk`` values (bounded memory, blocks that stay in cache).
    """
    d = np.moveaxis(np.asarray(dy, dtype=np.float64), axis, -1)
    shape = d.shape[:-1]
    d = d.reshape(int(np.prod(shape)), d.shape[-1])
    out = np.empty(d.shape[0], np.float64)
    step = max(1, chunk // max(1, d.shape[1]))
    for start in range(0, d.shape[0], step):
        out[start:start + step] = _robust_sigma_rows(d[start:start + step], iterations, c)
    return out.reshape(shape)


def _median_rows_inplace(x: np.ndarray, kth: int | None = None,
                         odd: np.ndarray | None = None) -> np.ndarray:
    """Median of each row of the 2-D array ``x`` from one partition, in place (the rows'
    order changes, not their values). By default the rows are full: the median is the order
    statistic L // 2, averaged with L // 2 - 1 for even L. Otherwise each row's (upper)
    middle value must fall on column ``kth``, and its lower middle on ``kth - 1`` where
    ``odd`` is False. The same values, and the same average, as np.median's."""
    if kth is None:
        kth = x.shape[1] // 2
        odd = np.full(x.shape[0], x.shape[1] % 2 == 1)
    x.partition(kth, axis=1)
    hi = x[:, kth].copy()
    if odd.all():
        return hi
    lo = x[:, :kth].max(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(odd, hi, (lo + hi) / 2)


class _Pads:
    """Where the missing (non-finite) values of a 2-D array are, and what to put there so
    that one partition finds every row's median of its finite values: as many -inf as put
    each row's (upper) middle finite value at the same column ``kth`` of every row (and an
    even row's lower middle at kth - 1), +inf for the rest."""

    def __init__(self, finite: np.ndarray):
        self.finite = finite
        self.n = finite.sum(axis=1)
        self.kth = int((self.n // 2).max())
        left = (self.kth - self.n // 2)[:, None]
        self.fill = np.where(np.cumsum(~finite, axis=1) <= left, -np.inf, np.inf)

    def median(self, x: np.ndarray) -> np.ndarray:
        y = np.where(self.finite, x, self.fill)
        med = _median_rows_inplace(y, self.kth, self.n % 2 == 1)
        med[self.n == 0] = np.nan
        return med


def median_rows(x: np.ndarray) -> np.ndarray:
    """(m,) median of the finite values of each row of the 2-D array ``x`` (NaN for a row
    with none): what np.median gives for the row's finite values, for all rows at once
    (np.nanmedian loops over rows). Rows of different lengths are NaN-padded rows."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if finite.all():
        return _median_rows_inplace(x.copy()) if x.shape[1] else np.full(x.shape[0], np.nan)
    if x.shape[1] < 2:
        return np.where(finite[:, 0], x[:, 0], np.nan)
    return _Pads(finite).median(x)


def _robust_sigma_rows(d: np.ndarray, iterations: int, c: float) -> np.ndarray:
    """robust_sigma of each row of the 2-D array ``d``."""
    finite = np.isfinite(d)
    out = np.full(d.shape[0], np.nan)
    if d.shape[1] < 3:
        return out
    if finite.all():
        n = np.full(d.shape[0], d.shape[1])
        # the biweight's sums do not depend on the order of a row: partition in place
        d = np.array(d, dtype=np.float64, copy=True)
        d -= _median_rows_inplace(d)[:, None]
        s = _median_rows_inplace(np.abs(d)) / 0.6745
        with np.errstate(over="ignore"):
            d2 = np.square(d, out=d)
    else:
        pads = _Pads(finite)
        n = pads.n
        d = np.where(finite, d, np.nan)
        d -= pads.median(d)[:, None]
        s = pads.median(np.abs(d)) / 0.6745
        with np.errstate(over="ignore", invalid="ignore"):
            d2 = np.square(d)
        # a missing value gets d^2 = the largest float: u^2 >= 1, no weight (while c s is
        # below 1e150, checked below; beyond, the mask is applied instead)
        d2[~finite] = np.inf
    # d^2 at most the largest float, so that 0 weight times d^2 is 0 (never inf * 0)
    np.minimum(d2, np.finfo(np.float64).max, out=d2)
    ok = n >= 3
    out[ok & (s == 0)] = 0.0
    rows = np.flatnonzero(ok & (s > 0))
    s_act, nn, d2 = s[rows], n[rows].astype(np.float64), d2[rows]
    valid = None
    if not finite.all() and rows.size and np.max(c * s_act) > 1e150:
        valid = finite[rows]
    buf = np.empty_like(d2)
    for _ in range(iterations):
        if rows.size == 0:
            break
        # a = max(1 - u^2, 0): points with |u| >= 1 get no weight, and
        # (1 - u^2)(1 - 5 u^2) = 5 a^2 - 4 a
        a = buf[:rows.size]
        with np.errstate(over="ignore"):
            np.multiply(d2, (1.0 / (c * s_act) ** 2)[:, None], out=a)
        np.subtract(1.0, a, out=a)
        np.maximum(a, 0.0, out=a)
        if valid is not None:
            a *= valid
        s1 = a.sum(axis=1)
        np.square(a, out=a)
        s2 = a.sum(axis=1)
        np.square(a, out=a)
        num = np.sqrt(nn * np.einsum("ij,ij->i", d2, a))
        den = np.abs(5.0 * s2 - 4.0 * s1)
        bad = den == 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            new = num / den
            done = bad | (np.abs(new - s_act) <= 1e-10 * s_act)
        out[rows[bad]] = np.nan
        fin = done & ~bad
        out[rows[fin]] = new[fin]
        s_act = new
        if done.any():
            keep = ~done
            rows, s_act, nn, d2 = rows[keep], s_act[keep], nn[keep], d2[keep]
            if valid is not None:
                valid = valid[keep]
    out[rows] = s_act
    return out


METRIC_COLUMNS = ("n", "robust_sigma", "bias", "mad", "outlier_fraction", "within_1sigma",
                  "within_2sigma", "z_robust_sigma")


def residual_metrics(pred: np.ndarray, pred_err: np.ndarray, ref: np.ndarray,
                     ref_err: np.ndarray | None = None) -> dict[str, float]:
    """Statistics of residuals pred - ref, all arrays (n,) in the label's units.

    n: pairs with finite pred and ref; robust_sigma: Tukey biweight (robust_sigma); bias:
    median residual; mad: median |residual - bias|; outlier_fraction: share with
    |residual - bias| > 3 robust_sigma; within_1sigma, within_2sigma: share with |residual| <
    sigma_tot, < 2 sigma_tot, where sigma_tot = sqrt(pred_err^2 + ref_err^2) (0.683, 0.954
    when calibrated); z_robust_sigma: robust sigma of residual / sigma_tot (1 when
    calibrated).
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
        out["within_2sigma"] = float(np.mean(np.abs(z) < 2))
        out["z_robust_sigma"] = robust_sigma(z)
    return out
