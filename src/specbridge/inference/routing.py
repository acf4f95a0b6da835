"""Per-regime model selection at prediction time: a router candidate's [Fe/H] decides each
star's regime, and each label comes from the candidate the selection table names for that
label and regime, optionally blended smoothly across the threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

REGIMES = ("metal_poor", "metal_rich")
METAL_POOR, METAL_RICH, NO_REGIME = 0, 1, -1


def regime_of(feh: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) int8: METAL_POOR for [Fe/H] <= threshold, METAL_RICH above, NO_REGIME for NaN."""
    feh = np.asarray(feh, np.float64)
    out = np.where(feh > threshold, METAL_RICH, METAL_POOR).astype(np.int8)
    out[~np.isfinite(feh)] = NO_REGIME
    return out


@dataclass
class Routed:
    """value, error: (n, n_labels) physical units; regime: (n,) int8 (from the router's
    [Fe/H], or on ``fallback`` rows from another candidate's, see :func:`route`); served:
    (n, n_labels) int16 index into the candidate list of the candidate that served each value
    (the one with the larger weight when blending), -1 where none did; fallback: (n,) bool,
    True where the router gave no finite [Fe/H]."""

    value: np.ndarray
    error: np.ndarray
    regime: np.ndarray
    served: np.ndarray
    fallback: np.ndarray


def _first_finite(values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(value, k): per row the first finite of ``values`` (each (n,)) and its position in
    the sequence; NaN and -1 where none is finite."""
    out = np.full(values[0].shape, np.nan)
    which = np.full(values[0].shape, -1, np.int64)
    for k, v in enumerate(values):
        take = (which < 0) & np.isfinite(v)
        out[take] = v[take]
        which[take] = k
    return out, which


BLENDS = ("probability", "hard", "linear")


def _weights(feh: np.ndarray, feh_err: np.ndarray | None, regime: np.ndarray,
             threshold: float, blend: str, blend_width: float) -> np.ndarray:
    """(n,) weight of the metal-rich candidate: 'hard' 0/1 by the regime; 'linear' rising
    from 0 at threshold - w/2 to 1 at threshold + w/2; 'probability' Phi((feh - threshold) /
    feh_err), the probability that the star is metal-rich given the router's [Fe/H] and its
    error (hard where that error is not finite and positive)."""
    hard = (regime == METAL_RICH).astype(np.float64)
    if blend == "hard" or (blend == "linear" and blend_width <= 0):
        return hard
    if blend == "linear":
        return np.clip((feh - threshold) / blend_width + 0.5, 0.0, 1.0)
    if blend != "probability":
        raise ValueError(f"blend must be one of {BLENDS}, not {blend!r}")
    from scipy.special import ndtr

    sig = np.asarray(feh_err, np.float64) if feh_err is not None else np.full_like(feh, np.nan)
    good = np.isfinite(sig) & (sig > 0) & np.isfinite(feh)
    w = hard.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        w[good] = ndtr((feh[good] - threshold) / sig[good])
    return w


def route(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], candidates: Sequence[str],
          labels: Sequence[str], selection: Mapping[tuple[str, str], str], router: str,
          threshold: float, blend_width: float = 0.0, blend: str | None = None) -> Routed:
    """Combine candidates' predictions by regime.

    ``preds[name] = (value, error)``, each (n, n_labels); ``selection[(label, regime)]``
    names a candidate; ``router`` is the candidate whose [Fe/H] sets the regime. ``blend``
    (None: 'linear' if ``blend_width`` > 0 else 'hard') sets the metal-rich weight w:

    - 'hard': 1 above the threshold, 0 at or below it;
    - 'linear': rising linearly from 0 at threshold - blend_width/2 to 1 at
      threshold + blend_width/2;
    - 'probability': Phi((feh_r - threshold) / sigma_r) with feh_r, sigma_r the router's
      [Fe/H] and its (recalibrated) error.

    Where 0 < w < 1 the value is w v_rich + (1 - w) v_poor and the error the square root of
    the mixture variance w e_rich^2 + (1 - w) e_poor^2 + w (1 - w) (v_rich - v_poor)^2 (it
    includes the spread between the two candidates); where the candidate with the smaller
    weight gives NaN the other serves alone, where the one with the larger weight (the one
    named in ``served``) gives NaN the label stays NaN, as with the hard choice. ``regime``
    is always the hard regime of the router's value (w = 0 or 1 gives exactly the hard
    choice's value and error).

    Where the router's [Fe/H] is not finite (``Routed.fallback``) the regime comes from the
    [Fe/H] of the first of the candidates selected for feh (metal-rich selection first,
    then metal-poor) that has a finite value there (its error serving as sigma_r), and
    routing proceeds as above; where none has one the regime is NO_REGIME and each label
    takes the first finite value of its two selected candidates (metal-rich first). Rows
    with a finite router value are routed exactly as without this fallback.
    """
    if router not in preds:
        raise ValueError(f"router {router!r} is not among the candidates {sorted(preds)}")
    if "feh" not in labels:
        raise ValueError("routing needs 'feh' among the labels")
    if blend is None:
        blend = "linear" if blend_width > 0 else "hard"
    labels = list(labels)
    candidates = list(candidates)
    ife = labels.index("feh")
    feh = preds[router][0][:, ife]
    feh_err = preds[router][1][:, ife]
    fallback = ~np.isfinite(feh)
    if fallback.any():
        feh, feh_err = feh.copy(), np.array(feh_err, np.float64, copy=True)
        order = (selection[("feh", "metal_rich")], selection[("feh", "metal_poor")])
        got, k = _first_finite([preds[c][0][fallback, ife] for c in order])
        feh[fallback] = got
        errs = np.stack([preds[c][1][fallback, ife] for c in order])
        feh_err[fallback] = np.where(k >= 0, errs[np.clip(k, 0, 1), np.arange(k.size)],
                                     np.nan)
    regime = regime_of(feh, threshold)
    w = _weights(feh, feh_err, regime, threshold, blend, blend_width)
    n = feh.shape[0]
    value = np.full((n, len(labels)), np.nan)
    error = np.full((n, len(labels)), np.nan)
    served = np.full((n, len(labels)), -1, np.int16)
    ok = regime != NO_REGIME
    none = ~ok  # no regime at all: per label, the first finite of its two candidates
    rich_side = w >= 0.5
    for i, lab in enumerate(labels):
        poor, rich = selection[(lab, "metal_poor")], selection[(lab, "metal_rich")]
        vp, ep = preds[poor][0][:, i], preds[poor][1][:, i]
        vr, er = preds[rich][0][:, i], preds[rich][1][:, i]
        if poor == rich:
            v, e = vr, er
        else:
            # the candidate with the smaller weight serves no NaN into the blend: it drops out
            wi = np.where(rich_side & ~np.isfinite(vp), 1.0,
                          np.where(~rich_side & ~np.isfinite(vr), 0.0, w))
            with np.errstate(invalid="ignore"):
                v = np.where(wi == 1, vr, np.where(wi == 0, vp, wi * vr + (1 - wi) * vp))
                mix = wi * er ** 2 + (1 - wi) * ep ** 2 + wi * (1 - wi) * (vr - vp) ** 2
                e = np.where(wi == 1, er, np.where(wi == 0, ep, np.sqrt(mix)))
        value[ok, i] = v[ok]
        error[ok, i] = e[ok]
        pick = np.where(rich_side, candidates.index(rich), candidates.index(poor))
        served[ok & np.isfinite(value[:, i]), i] = pick[ok & np.isfinite(value[:, i])]
        if none.any():
            got, k = _first_finite([vr[none], vp[none]])
            value[none, i] = got
            error[none, i] = np.where(k == 0, er[none], np.where(k == 1, ep[none], np.nan))
            served[none, i] = np.where(k == 0, candidates.index(rich),
                                       np.where(k == 1, candidates.index(poor), -1))
    return Routed(value, error, regime, served, fallback)


ROUTED_PASS = "__routed_first_pass__"


def route_passes(preds: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 candidates: Sequence[str], labels: Sequence[str],
                 selection: Mapping[tuple[str, str], str], router: str, threshold: float,
                 blend_width: float = 0.0, blend: str | None = None,
                 passes: int = 1) -> Routed:
    """:func:`route`, and with ``passes`` = 2 once more with the first pass's routed [Fe/H]
    (and its error) as the router. ``fallback`` is True where either pass fell back."""
    first = route(preds, candidates, labels, selection, router, threshold, blend_width, blend)
    if passes == 1:
        return first
    if passes != 2:
        raise ValueError(f"passes must be 1 or 2, not {passes}")
    again = route({**preds, ROUTED_PASS: (first.value, first.error)}, candidates, labels,
                  selection, ROUTED_PASS, threshold, blend_width, blend)
    again.fallback = again.fallback | first.fallback
    return again
