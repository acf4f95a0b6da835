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


def route(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], candidates: Sequence[str],
          labels: Sequence[str], selection: Mapping[tuple[str, str], str], router: str,
          threshold: float, blend_width: float = 0.0) -> Routed:
    """Combine candidates' predictions by regime.

    ``preds[name] = (value, error)``, each (n, n_labels); ``selection[(label, regime)]``
    names a candidate; ``router`` is the candidate whose [Fe/H] sets the regime. With
    ``blend_width`` w > 0 the metal-rich weight rises linearly from 0 at threshold - w/2 to 1
    at threshold + w/2, the value is the weighted mean and the error the square root of the
    weighted variances; with w = 0 the choice is hard. A label whose selected candidate
    gives NaN stays NaN.

    Where the router's [Fe/H] is not finite (``Routed.fallback``) the regime comes from the
    [Fe/H] of the first of the candidates selected for feh (metal-rich selection first,
    then metal-poor) that has a finite value there, and routing proceeds as above; where
    none has one the regime is NO_REGIME and each label takes the first finite value of its
    two selected candidates (metal-rich first). Rows with a finite router value are routed
    exactly as without this fallback.
    """
    if router not in preds:
        raise ValueError(f"router {router!r} is not among the candidates {sorted(preds)}")
    if "feh" not in labels:
        raise ValueError("routing needs 'feh' among the labels")
    labels = list(labels)
    candidates = list(candidates)
    ife = labels.index("feh")
    feh = preds[router][0][:, ife]
    fallback = ~np.isfinite(feh)
    if fallback.any():
        feh = feh.copy()
        order = (selection[("feh", "metal_rich")], selection[("feh", "metal_poor")])
        feh[fallback] = _first_finite([preds[c][0][fallback, ife] for c in order])[0]
    regime = regime_of(feh, threshold)
    if blend_width > 0:
        w = np.clip((feh - threshold) / blend_width + 0.5, 0.0, 1.0)
    else:
        w = (regime == METAL_RICH).astype(np.float64)
    n = feh.shape[0]
    value = np.full((n, len(labels)), np.nan)
    error = np.full((n, len(labels)), np.nan)
    served = np.full((n, len(labels)), -1, np.int16)
    ok = regime != NO_REGIME
    none = ~ok  # no regime at all: per label, the first finite of its two candidates
    for i, lab in enumerate(labels):
        poor, rich = selection[(lab, "metal_poor")], selection[(lab, "metal_rich")]
        vp, ep = preds[poor][0][:, i], preds[poor][1][:, i]
        vr, er = preds[rich][0][:, i], preds[rich][1][:, i]
        with np.errstate(invalid="ignore"):
            v = np.where(w == 1, vr, np.where(w == 0, vp, w * vr + (1 - w) * vp))
            e = np.where(w == 1, er, np.where(w == 0, ep,
                                              np.sqrt(w * er ** 2 + (1 - w) * ep ** 2)))
        value[ok, i] = v[ok]
        error[ok, i] = e[ok]
        pick = np.where(w >= 0.5, candidates.index(rich), candidates.index(poor))
        served[ok & np.isfinite(value[:, i]), i] = pick[ok & np.isfinite(value[:, i])]
        if none.any():
            got, k = _first_finite([vr[none], vp[none]])
            value[none, i] = got
            error[none, i] = np.where(k == 0, er[none], np.where(k == 1, ep[none], np.nan))
            served[none, i] = np.where(k == 0, candidates.index(rich),
                                       np.where(k == 1, candidates.index(poor), -1))
    return Routed(value, error, regime, served, fallback)
