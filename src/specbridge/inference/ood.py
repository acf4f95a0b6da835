"""Out-of-domain flags: a model applied outside its training domain answers confidently and
wrongly, so every catalogued spectrum is checked twice.

* Spectrum space (``OOD_SPECTRUM``): the SpecFormer's masked-reconstruction score
  (:meth:`specbridge.models.specformer.SpecFormer.spectrum_scores`, the excess squared error of
  reconstructing each pixel unseen, in squared standardised flux units) above a threshold: the
  ``percentile`` of the same score over in-domain spectra of the same survey. For LAMOST
  (the real validation sets) these are the LAMOST spectra held out of the SpecFormer's
  training (stored with its checkpoint as quantiles); for DESI the labelled DESI stars
  outside the test split (evaluation writes the threshold into the calibration table), since
  DESI spectra as a whole differ from LAMOST's (sky residuals) and would otherwise be flagged
  wholesale.
  Also ``OOD_SPECTRUM``: the embedding's distance from the training spectra's
  (``ood_distance``, :func:`density_distance`: Mahalanobis in the leading principal components
  of the standardised training embeddings) above its threshold. The two see different things:
  the reconstruction score a spectrum whose pixels the model cannot predict, the distance one
  it reconstructs well but places where no training star lies (M dwarfs). For DESI both
  thresholds sit at the one percentile of those stars' at which 100 - ``percentile``
  % of them are above either (so together they flag what one would); for LAMOST each is the
  ``percentile`` of the held-out spectra's (the checkpoint keeps each check's quantiles, not
  their pairs), so together up to twice that.
* Label space (``OOD_LABELS``): served labels outside the support of the training labels (the
  LAMOST labels the candidates were pretrained on): a label outside their range, or the set
  of labels far from every training star's in the joint space (:func:`label_distance`: a
  combination the training set does not hold, such as a cool dwarf's Teff with a subgiant's
  log g); or the fine-tuned candidates disagreeing with the served value beyond ``z_max``
  times their combined errors (most of them, on some label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specbridge import flags

BATCH = 256


def spectrum_scores(model: Any, flux: np.ndarray, ivar: np.ndarray, usable: np.ndarray,
                    batch: int = BATCH) -> np.ndarray:
    """(n,) float32 out-of-domain scores of the ``usable`` rows of ``flux``/``ivar`` (n, npix)
    from a SpecFormer in eval mode (on its device); NaN elsewhere."""
    import torch

    out = np.full(flux.shape[0], np.nan, np.float32)
    idx = np.flatnonzero(usable)
    device = next(model.parameters()).device
    with torch.no_grad():
        for a in range(0, idx.size, batch):
            j = idx[a:a + batch]
            out[j] = model.spectrum_scores(
                torch.from_numpy(np.ascontiguousarray(flux[j])).to(device),
                torch.from_numpy(np.ascontiguousarray(ivar[j])).to(device)).cpu().numpy()
    return out


def score_threshold(quantiles: Sequence[float], percentile: float) -> float | None:
    """The ``percentile`` (0-100) of the held-out LAMOST spectra's score, interpolated in the
    evenly spaced ``quantiles`` (0 % to 100 %) stored with the SpecFormer checkpoint; None
    without finite quantiles."""
    q = np.asarray(quantiles, np.float64)
    if q.size < 2 or not np.isfinite(q).all():
        return None
    return float(np.interp(percentile / 100.0, np.linspace(0.0, 1.0, q.size), q))


def fit_density(emb: np.ndarray, k: int = 8) -> dict[str, np.ndarray]:
    """The embedding density model of training embeddings ``emb`` (n, d), standardised:
    'mean' (d,), the leading ``k`` principal 'components' (k, d) and their 'variances'
    (k,); rows with a non-finite value are left out."""
    x = np.asarray(emb, np.float64)
    x = x[np.isfinite(x).all(1)]
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    var = np.maximum(sv[:k] ** 2 / max(len(x) - 1, 1), 1e-12)
    return {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32),
            "variances": var.astype(np.float32)}


def density_distance(emb: np.ndarray, density: Mapping[str, Any] | None) -> np.ndarray:
    """(n,) the squared Mahalanobis distance, over k, of embeddings ``emb`` (n, d) from the
    training embeddings in ``density``'s k principal components (about 1 for a training
    spectrum; chi-square with k degrees of freedom over k for Gaussian embeddings); NaN for
    a non-finite row or without a density."""
    emb = np.asarray(emb, np.float64)
    out = np.full(emb.shape[0], np.nan)
    if not density:
        return out
    comp = np.asarray(density["components"], np.float64)
    var = np.asarray(density["variances"], np.float64)
    ok = np.isfinite(emb).all(1)
    z = (emb[ok] - np.asarray(density["mean"], np.float64)) @ comp.T
    out[ok] = (z ** 2 / var).sum(1) / var.size
    return out


def label_support(labels: np.ndarray, joint: Sequence[int] = (0, 1), k: int = 10,
                  max_points: int = 5000, seed: int = 0) -> dict[str, Any]:
    """The training labels' support, from ``labels`` (n, n_labels) in physical units:

    * ``lo``, ``hi`` (n_labels,): the smallest and largest finite label (the range);
    * ``joint``: the columns of the joint check (by default Teff and log g, the Kiel
      diagram, where stellar evolution leaves regions empty); ``center``, ``scale``
      (len(joint),): their median and robust spread (1.4826 MAD), which standardise them;
    * ``points`` (m, len(joint)): the standardised training labels (complete rows; at most
      ``max_points``, a random subset drawn with ``seed``), ``k``, and
      ``distance_quantiles``: 201 evenly spaced quantiles (0 to 100 %) of each point's
      distance to its ``k``-th nearest other point; the threshold is a percentile of them
      (:func:`label_threshold`).

    A served label set farther than the threshold from its ``k``-th nearest training label
    set lies where the training labels have (almost) no stars, even if every label is
    inside its range: a cool dwarf given a subgiant's gravity, say (:func:`label_distance`).
    The threshold comes from the training labels alone: at the P-th percentile it flags
    about 100 - P % of training stars and fewer in-domain predictions (which regress towards
    dense regions)."""
    from scipy.spatial import cKDTree

    lab = np.asarray(labels, np.float64)
    out: dict[str, Any] = {"lo": np.nanmin(lab, axis=0).tolist(),
                           "hi": np.nanmax(lab, axis=0).tolist()}
    joint = [int(j) for j in joint]
    if not joint:
        return out
    full = lab[:, joint]
    full = full[np.isfinite(full).all(1)]
    if len(full) <= k:
        return out
    center = np.median(full, axis=0)
    scale = 1.4826 * np.median(np.abs(full - center), axis=0)
    scale = np.where(scale > 0, scale, np.where(full.std(0) > 0, full.std(0), 1.0))
    if len(full) > max_points:
        full = full[np.sort(np.random.default_rng(seed).choice(len(full), max_points,
                                                                replace=False))]
    pts = ((full - center) / scale).astype(np.float32)
    d, _ = cKDTree(pts).query(pts, k=k + 1)
    out.update({"joint": joint, "center": center.tolist(), "scale": scale.tolist(),
                "points": pts.tolist(), "k": int(k),
                "distance_quantiles": np.quantile(d[:, k], np.linspace(0, 1, 201)).tolist()})
    return out


def label_threshold(support: Mapping[str, Any] | None, percentile: float) -> float | None:
    """The joint label-space threshold: the ``percentile`` (0-100) of the training labels'
    own ``k``-th neighbour distances in ``support``; None without them."""
    if not support or not support.get("distance_quantiles"):
        return None
    return score_threshold(support["distance_quantiles"], percentile)


def label_distance(value: np.ndarray, support: Mapping[str, Any] | None) -> np.ndarray:
    """(n,) distance, in standardised label units, from each row of ``value`` (n, n_labels;
    physical units) to its ``k``-th nearest training label set in ``support``
    (:func:`label_support`, over its ``joint`` columns); NaN for a row with a non-finite
    label there or without the points."""
    value = np.asarray(value, np.float64)
    out = np.full(value.shape[0], np.nan)
    if not support or not support.get("points"):
        return out
    value = value[:, [int(j) for j in support["joint"]]]
    from scipy.spatial import cKDTree

    pts = np.asarray(support["points"], np.float64)
    ok = np.isfinite(value).all(1)
    if ok.any():
        z = (value[ok] - np.asarray(support["center"])) / np.asarray(support["scale"])
        d, _ = cKDTree(pts).query(z, k=int(support["k"]))
        out[ok] = d[:, -1] if d.ndim == 2 else d
    return out


def outside_support(value: np.ndarray, support: Mapping[str, Any] | None,
                    percentile: float = 99.0) -> np.ndarray:
    """(n,) bool: some finite label of ``value`` (n, n_labels) outside [lo, hi], or the row
    farther from the training labels (:func:`label_distance`) than the ``percentile``
    (0-100) of their own distances (:func:`label_threshold`; skipped for a support without
    them)."""
    if not support:
        return np.zeros(value.shape[0], bool)
    lo, hi = np.asarray(support["lo"]), np.asarray(support["hi"])
    thr = label_threshold(support, percentile)
    with np.errstate(invalid="ignore"):
        out = ((value < lo) | (value > hi)).any(axis=1)
        if thr is not None:
            out |= label_distance(value, support) > thr
    return out


def disagreeing(value: np.ndarray, error: np.ndarray,
                others: Sequence[tuple[np.ndarray, np.ndarray]], z_max: float) -> np.ndarray:
    """(n,) bool: on some label, more than half of the ``others`` (value, error) pairs, each
    (n, n_labels), that have a value differ from the served ``value`` by more than ``z_max``
    times the combined error sqrt(error^2 + error_other^2)."""
    if not others:
        return np.zeros(value.shape[0], bool)
    votes = np.zeros(value.shape, int)
    have = np.zeros(value.shape, int)
    with np.errstate(invalid="ignore"):
        for v, e in others:
            ok = np.isfinite(v) & np.isfinite(value)
            z = np.abs(v - value) / np.sqrt(error ** 2 + e ** 2)
            votes += ok & (z > z_max)
            have += ok
    return ((have > 0) & (2 * votes > have)).any(axis=1)


def ood_flags(score: np.ndarray | None, threshold: float | None, value: np.ndarray,
              error: np.ndarray, support: Mapping[str, Sequence[float]] | None,
              others: Sequence[tuple[np.ndarray, np.ndarray]], z_max: float,
              distance: np.ndarray | None = None, distance_threshold: float | None = None,
              percentile: float = 99.0) -> np.ndarray:
    """(n,) int64 flag bits: ``OOD_SPECTRUM`` where ``score`` (n,) exceeds ``threshold``
    or ``distance`` (n,) exceeds ``distance_threshold`` (each skipped when it or its threshold
    is None), ``OOD_LABELS`` where the served (value, error) (n, n_labels) is outside
    ``support`` (:func:`outside_support` at ``percentile``) or disagrees with the
    ``others`` (see :func:`disagreeing`)."""
    out = np.zeros(value.shape[0], np.int64)
    for x, thr in ((score, threshold), (distance, distance_threshold)):
        if x is not None and thr is not None:
            with np.errstate(invalid="ignore"):
                out[np.asarray(x) > thr] |= flags.flag("OOD_SPECTRUM")
    lab = outside_support(value, support, percentile) | disagreeing(value, error, others, z_max)
    out[lab] |= flags.flag("OOD_LABELS")
    return out
