"""Bootstrap intervals over stars for the statistics of residuals, and paired differences
between two candidates judged on the same resampled stars.

The resampling unit is a star: with ``groups`` (one star ID per row) the star IDs are drawn with
replacement and every row of a drawn star comes along, so repeat visits of a star stay
together and do not pass for independent evidence. Without ``groups`` every row is a star.

Intervals are percentile intervals of the bootstrap replicates (``level`` 0.68: the 16th and
84th percentiles). The resampled row indices are drawn once per call as an (n_boot, L) matrix
(``resample_indices``; -1 pads replicates with fewer rows when stars have different numbers of
visits) and shared by every array and both candidates of a paired difference. The statistics
named in :data:`VECTORISED` (robust sigma, median or bias, mean) are evaluated for all replicates
at once along an axis; any other callable is applied replicate by replicate.

Rows where any of the arrays is not finite are left out before resampling (for a paired
difference: rows where either candidate has no finite residual), so both candidates are always
judged on the same stars.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from specbridge.evaluation.metrics import (
    median_rows,
    robust_sigma,
    robust_sigma_axis,
    total_error,
)

VERDICTS = ("yes", "no", "not significant")
BETTER = ("lower", "higher", "closer_to_zero")


class Interval(NamedTuple):
    """A statistic on all rows and the bootstrap interval at the requested level."""

    estimate: float
    lo: float
    hi: float


class PairedDifference(NamedTuple):
    """stat(a) - stat(b) (of |stat| for ``better="closer_to_zero"``), its interval, and
    whether a is better than b beyond the interval: "yes", "no" or "not significant"."""

    difference: float
    lo: float
    hi: float
    verdict: str


class PairedRatio(NamedTuple):
    """stat(a) / stat(b), its interval, and whether a is lower than b beyond the interval:
    "yes", "no" or "not significant"."""

    ratio: float
    lo: float
    hi: float
    verdict: str


def _median_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    return median_rows(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1])


def _mean_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if x.size else float("nan")


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


# name: (the statistic on one sample, the same along an axis of a NaN-padded matrix)
def _total_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.hypot(_median_axis(x, axis), robust_sigma_axis(x, axis=axis))


VECTORISED: dict[str, tuple[Callable[[np.ndarray], float], Callable[..., np.ndarray]]] = {
    "robust_sigma": (robust_sigma, robust_sigma_axis),
    "total_error": (total_error, _total_axis),
    "median": (_median, _median_axis),
    "bias": (_median, _median_axis),  # bias of residuals pred - ref: their median
    "mean": (_mean, _mean_axis),
}
_BY_FUNCTION = {robust_sigma: "robust_sigma", robust_sigma_axis: "robust_sigma",
                np.median: "median", np.nanmedian: "median", np.mean: "mean",
                np.nanmean: "mean"}


def _vectorised_name(stat: str | Callable, n_arrays: int) -> str | None:
    """The :data:`VECTORISED` name of ``stat`` (None: a callable applied per replicate)."""
    if isinstance(stat, str):
        if stat not in VECTORISED:
            raise ValueError(f"unknown statistic {stat!r}; one of {sorted(VECTORISED)} or a "
                             "callable")
        name = stat
    else:
        name = _BY_FUNCTION.get(stat)
    if name is not None and n_arrays != 1:
        raise ValueError(f"statistic {name!r} takes one array, not {n_arrays}")
    return name


def _codes(groups: Any, n: int) -> np.ndarray | None:
    """Integer star codes 0..G-1 of the rows, or None when every row is its own star."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n},)")
    return np.unique(g, return_inverse=True)[1].reshape(n)


def resample_indices(n: int, groups: Any = None, n_boot: int = 1000,
                     seed: int | np.random.Generator = 0) -> np.ndarray:
    """(n_boot, L) row indices of ``n_boot`` bootstrap samples of ``n`` rows.

    Without ``groups`` each replicate draws n rows with replacement (L = n). With ``groups``
    ((n,) star IDs, any dtype) it draws as many star IDs as there are stars, with replacement,
    and takes every row of each drawn star; replicates then differ in length when stars have
    different numbers of rows, and -1 pads each to the longest (L). Deterministic for an
    integer ``seed``.
    """
    rng = np.random.default_rng(seed)
    itype = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        return np.zeros((n_boot, 0), itype)
    codes = _codes(groups, n)
    if codes is None:
        return rng.integers(0, n, size=(n_boot, n), dtype=itype)
    order = np.argsort(codes, kind="stable")  # rows of star 0, then of star 1, ...
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_groups = sizes.size
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    if (sizes == sizes[0]).all():  # every star has the same number of rows: no padding
        k = int(sizes[0])
        cols = starts[draws][:, :, None] + np.arange(k)
        return order[cols].reshape(n_boot, n_groups * k).astype(itype, copy=False)
    size = sizes[draws]                      # (n_boot, G) rows each drawn star brings
    width = int(size.sum(axis=1).max())
    # drawn star j: out.flat[dest_j + k] = order[src_j + k] for k < size_j; the replicate's
    # rows one after another from its start, -1 after them
    before = (np.cumsum(size, axis=1) - size) + (np.arange(n_boot) * width)[:, None]
    flat_size = size.ravel()
    k0 = np.cumsum(flat_size) - flat_size    # position of each drawn star's first row in k
    k = np.arange(int(flat_size.sum()))
    out = np.full(n_boot * width, -1, itype)
    out[k + np.repeat(before.ravel() - k0, flat_size)] = order[
        k + np.repeat(starts[draws].ravel() - k0, flat_size)]
    return out.reshape(n_boot, width)


def _finite_rows(arrays: list[np.ndarray]) -> np.ndarray:
    n = len(arrays[0])
    ok = np.ones(n, bool)
    for a in arrays:
        if len(a) != n:
            raise ValueError("arrays of different lengths")
        fin = np.isfinite(a)
        ok &= fin.all(axis=tuple(range(1, a.ndim))) if a.ndim > 1 else fin
    return ok


def _replicates(name: str | None, stat: Callable | str, arrays: list[np.ndarray],
                idx: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """The statistic on every bootstrap sample (rows of ``idx``): (n_boot,)."""
    n_boot = idx.shape[0]
    out = np.empty(n_boot, np.float64)
    if name is not None:
        axis_fn = VECTORISED[name][1]
        x = np.append(np.asarray(arrays[0], np.float64), np.nan)  # index -1: the NaN pad
        step = max(1, chunk // max(1, idx.shape[1]))
        for start in range(0, n_boot, step):
            out[start:start + step] = axis_fn(x[idx[start:start + step]], axis=1)
        return out
    padded = bool((idx < 0).any())
    for b in range(n_boot):
        rows = idx[b][idx[b] >= 0] if padded else idx[b]
        out[b] = stat(*[a[rows] for a in arrays])
    return out


def _check(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), not {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, not {n_boot}")


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_interval(stat: str | Callable, *arrays: Any, groups: Any = None,
                       n_boot: int = 1000, level: float = 0.68,
                       seed: int | np.random.Generator = 0) -> Interval:
    """(estimate, lo, hi): ``stat`` of ``arrays`` (each (n, ...), rows aligned) and its
    bootstrap interval at ``level`` (e.g. 0.68 or 0.95) over stars.

    ``stat``: a name in :data:`VECTORISED` ("robust_sigma", "bias"/"median", "mean"; also
    :func:`~specbridge.evaluation.metrics.robust_sigma`, ``np.median`` or ``np.mean`` given as
    functions), evaluated for all replicates at once; or any callable ``stat(*arrays) ->
    float``, applied to each replicate. ``groups``: (n,) star IDs (SPECID, TARGETID, file
    name...): stars are resampled, with all their rows. Rows with a non-finite value in any
    array are left out first. The estimate is ``stat`` on the remaining rows, exactly what
    the unbootstrapped statistic reports; all NaN when no row is left.
    """
    if not arrays:
        raise ValueError("no array given")
    _check(level, n_boot)
    name = _vectorised_name(stat, len(arrays))
    arrs = [np.asarray(a) for a in arrays]
    if name is not None and arrs[0].ndim != 1:
        raise ValueError(f"statistic {name!r} takes a 1-D array, not shape {arrs[0].shape}")
    ok = _finite_rows(arrs)
    arrs = [a[ok] for a in arrs]
    n = int(ok.sum())
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    g = None if groups is None else np.asarray(groups)[ok]
    est = float(VECTORISED[name][0](arrs[0]) if name else stat(*arrs))
    idx = resample_indices(n, g, n_boot, seed)
    return Interval(est, *_percentiles(_replicates(name, stat, arrs, idx), level))


def _score(value: np.ndarray | float, better: str) -> np.ndarray | float:
    if better not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, not {better!r}")
    return np.abs(value) if better == "closer_to_zero" else value


def verdict(lo: float, hi: float, better: str = "lower") -> str:
    """Is a better than b, given the interval [lo, hi] of score(a) - score(b)? "yes" beyond
    the interval, "no" when worse beyond it, "not significant" otherwise (also for a NaN
    interval). With a 68 % interval, about a third of truly equal pairs are not "not
    significant": declare winners on 0.95."""
    if better == "higher":
        lo, hi = -hi, -lo
    if hi < 0:
        return "yes"
    if lo > 0:
        return "no"
    return "not significant"


def _paired(stat: str | Callable, a_resid: Any, b_resid: Any, groups: Any, n_boot: int,
            seed: int | np.random.Generator
            ) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """(stat(a), stat(b), (n_boot,) replicates of stat(a), of stat(b)) on the rows where both
    (n,) residuals are finite, every replicate resampling the same stars for both; None
    without such rows."""
    name = _vectorised_name(stat, 1)
    a, b = np.asarray(a_resid, np.float64), np.asarray(b_resid, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"residuals of shapes {a.shape} and {b.shape}: need one (n,) shape")
    ok = _finite_rows([a, b])
    a, b = a[ok], b[ok]
    if a.size == 0:
        return None
    g = None if groups is None else np.asarray(groups)[ok]
    one = VECTORISED[name][0] if name else stat
    idx = resample_indices(a.size, g, n_boot, seed)
    return (one(a), one(b), _replicates(name, stat, [a], idx),
            _replicates(name, stat, [b], idx))


def paired_difference(stat: str | Callable, a_resid: Any, b_resid: Any, groups: Any = None,
                      n_boot: int = 1000, level: float = 0.68,
                      seed: int | np.random.Generator = 0,
                      better: str = "lower") -> PairedDifference:
    """(difference, lo, hi, verdict) of candidate a against candidate b on the same stars.

    ``a_resid``, ``b_resid``: (n,) residuals of the two candidates on the same rows (rows
    where either is not finite are left out). ``stat`` as in :func:`bootstrap_interval`. Each
    replicate resamples the stars once (``groups``: (n,) star IDs) and evaluates ``stat`` on
    both candidates' residuals of those stars, so what the stars share cancels in the
    difference. The difference is score(stat(a)) - score(stat(b)) with score the identity
    (``better`` "lower", e.g. robust sigma; or "higher") or the absolute value
    ("closer_to_zero", e.g. bias). Verdict: "yes" if a is better beyond the interval (hi < 0
    for "lower"), "no" if worse beyond it, "not significant" otherwise.
    """
    _check(level, n_boot)
    _score(0.0, better)
    pair = _paired(stat, a_resid, b_resid, groups, n_boot, seed)
    if pair is None:
        return PairedDifference(float("nan"), float("nan"), float("nan"), "not significant")
    sa, sb, ra, rb = pair
    diff = float(_score(sa, better) - _score(sb, better))
    lo, hi = _percentiles(_score(ra, better) - _score(rb, better), level)
    return PairedDifference(diff, lo, hi, verdict(lo, hi, better))


def paired_ratio(stat: str | Callable, a_resid: Any, b_resid: Any, groups: Any = None,
                 n_boot: int = 1000, level: float = 0.68,
                 seed: int | np.random.Generator = 0) -> PairedRatio:
    """(ratio, lo, hi, verdict) of stat(a) / stat(b) on the same resampled stars.

    As :func:`paired_difference`, with the ratio in place of the difference, for a positive
    scale statistic such as robust sigma ("within 1.5x" questions). ``a_resid``,
    ``b_resid``: (n,) residuals of the two candidates on the same rows; ``groups``: (n,) star
    IDs. Verdict: "yes" if a is lower beyond the interval (hi < 1), "no" if higher beyond it
    (lo > 1), "not significant" otherwise. All NaN ("not significant") when stat(b) is not
    positive (e.g. a single star); no interval when more than 1 % of the replicates have none.
    """
    _check(level, n_boot)
    pair = _paired(stat, a_resid, b_resid, groups, n_boot, seed)
    sb = float("nan") if pair is None else float(pair[1])
    if not (np.isfinite(sb) and sb > 0):  # no rows, or one star: no spread to divide by
        return PairedRatio(float("nan"), float("nan"), float("nan"), "not significant")
    sa, _, ra, rb = pair
    ratio = float(sa) / sb
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = ra / rb
    reps[~np.isfinite(reps)] = np.nan  # a replicate with no spread in b has no ratio
    if np.isnan(reps).mean() > 0.01:    # too many: the interval would be biased
        return PairedRatio(ratio, float("nan"), float("nan"), "not significant")
    lo, hi = _percentiles(reps, level)
    return PairedRatio(ratio, lo, hi, verdict(lo - 1.0, hi - 1.0, "lower"))
