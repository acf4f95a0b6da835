"""How good a pretrained SpecFormer's embeddings are, measured once after pretraining and stored
with its checkpoint: linear probes (ridge regression on frozen, standardised embeddings, and the
same on the pixels for reference) per label on held-out labelled spectra, the embedding
statistics used to standardise downstream, and the distribution of the out-of-domain score on
held-out LAMOST spectra (from which inference sets its threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from specbridge.evaluation.metrics import robust_sigma

if TYPE_CHECKING:
    import torch

    from specbridge.models.specformer import SpecFormer
    from specbridge.training.data import LabelledShards

# quantiles of the training spectra's out-of-domain score stored with the checkpoint
OOD_QUANTILES = np.linspace(0.0, 1.0, 1001)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of y (n,) on standardised x (n, d): (weights (d,), intercept (),
    feature mean (d,), feature std (d,)); ``alpha`` is the penalty per sample, so it does not
    depend on n."""
    mu = x.mean(0)
    sd = np.where(x.std(0) > 0, x.std(0), 1.0)
    z = (x - mu) / sd
    y0 = y.mean()
    a = z.T @ z + alpha * len(z) * np.eye(z.shape[1])
    w = np.linalg.solve(a, z.T @ (y - y0))
    return w, np.asarray(y0), mu, sd


def ridge_predict(model: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  x: np.ndarray) -> np.ndarray:
    """(n,) predictions of a :func:`ridge_fit` model for features x (n, d)."""
    w, y0, mu, sd = model
    return ((x - mu) / sd) @ w + y0


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, alpha: float = 1e-3) -> float:
    """Validation robust sigma (label units) of a ridge probe of one label fitted on the
    training rows; rows with a non-finite label are left out. NaN without rows."""
    tr, va = np.isfinite(train_y), np.isfinite(val_y)
    if tr.sum() < 2 or va.sum() < 2:
        return float("nan")
    model = ridge_fit(train_x[tr].astype(np.float64), train_y[tr], alpha)
    return float(robust_sigma(ridge_predict(model, val_x[va].astype(np.float64)) - val_y[va]))


def _pass(net: SpecFormer, data: LabelledShards, seed: int, device: torch.device,
          max_rows: int, scores: bool) -> dict[str, np.ndarray]:
    """Embeddings (m, d_model), out-of-domain scores (m,; NaN unless ``scores``), labels
    (m, n_labels; physical units, NaN: missing) of at most ``max_rows`` rows of ``data`` in a
    seeded random order, and the pixel inputs (k, npix) and labels (k, n_labels) of the
    labelled ones among them."""
    import torch

    out: dict[str, list[np.ndarray]] = {"emb": [], "score": [], "y": [], "x": [], "xy": []}
    n = 0
    with torch.no_grad():
        for b in data.batches(0, 256, seed, shuffle=True, drop_last=False):
            flux = torch.from_numpy(b.flux).to(device)
            ivar = torch.from_numpy(b.ivar).to(device)
            out["emb"].append(net.embed(flux, ivar).float().cpu().numpy())
            out["score"].append(net.spectrum_scores(flux, ivar).float().cpu().numpy()
                                if scores else np.full(len(b.y), np.nan, np.float32))
            out["y"].append(b.y)
            labelled = np.isfinite(b.y).any(axis=1)
            out["x"].append(b.x[labelled])
            out["xy"].append(b.y[labelled])
            n += len(b.y)
            if n >= max_rows:
                break
    return {k: np.concatenate(v) for k, v in out.items()}


def measure(net: SpecFormer, train_set: LabelledShards, val_set: LabelledShards,
            labels: Sequence[str], seed: int, device: torch.device,
            max_rows: int = 50_000, density_components: int = 8) -> dict[str, Any]:
    """Embedding quality of a trained SpecFormer (eval mode) on (at most ``max_rows`` random
    rows of each of) its training and validation spectra: ``embed_mean``, ``embed_std``
    (d_model,) of the training embeddings (a zero std replaced by 1); ``probe``: per label the
    validation robust sigma (label units) of ridge probes on the embeddings and on the pixels,
    the validation labels' spread and the numbers of labelled rows; ``ood_scores``: quantiles
    (:data:`OOD_QUANTILES`) of the out-of-domain score of the validation spectra, which the
    model did not train on (so a percentile of them flags that fraction of unseen in-domain
    spectra); ``density``: the standardised training embeddings' density model
    (:func:`specbridge.inference.ood.fit_density`, ``density_components`` of them) and
    ``ood_distances``: the quantiles of the validation spectra's distance from it."""
    from specbridge.inference.ood import density_distance, fit_density

    tr = _pass(net, train_set, seed, device, max_rows, scores=False)
    va = _pass(net, val_set, seed, device, max_rows, scores=True)
    mean = tr["emb"].mean(0)
    std = np.where(tr["emb"].std(0) > 0, tr["emb"].std(0), 1.0)
    probe = {}
    for i, lab in enumerate(labels):
        yv = va["y"][:, i]
        probe[lab] = {
            "embedding": linear_probe((tr["emb"] - mean) / std, tr["y"][:, i],
                                      (va["emb"] - mean) / std, yv),
            "pixels": linear_probe(tr["x"], tr["xy"][:, i], va["x"], va["xy"][:, i]),
            "spread": float(np.nanstd(yv)),
            "n_train": int(np.isfinite(tr["y"][:, i]).sum()),
            "n_val": int(np.isfinite(yv).sum())}
    scores = va["score"][np.isfinite(va["score"])]
    quantiles = (np.quantile(scores, OOD_QUANTILES) if scores.size
                 else np.full(OOD_QUANTILES.size, np.nan))
    density = fit_density((tr["emb"] - mean) / std, density_components)
    dist = density_distance((va["emb"] - mean) / std, density)
    dist = dist[np.isfinite(dist)]
    dq = (np.quantile(dist, OOD_QUANTILES) if dist.size
          else np.full(OOD_QUANTILES.size, np.nan))
    return {"embed_mean": mean.astype(np.float32), "embed_std": std.astype(np.float32),
            "probe": probe, "ood_scores": quantiles, "density": density,
            "ood_distances": dq}
