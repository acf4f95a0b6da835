"""Predictions of fine-tuned candidates on preprocessed DESI shards: the one code path that
evaluation and sharded inference share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from specbridge import flags
from specbridge.io.shards import ROW_FIELDS, read_index, read_shard
from specbridge.training.data import network_input


@dataclass
class Candidate:
    """A servable fine-tuned model. ``feature`` is 'flux' (network input from the spectra
    shards) or 'embedding' (SpecFormer embeddings); ``mean``/``std`` (n_labels,) undo the
    label standardisation."""

    name: str
    model: str
    strategy: str
    feature: str
    net: nn.Module
    labels: list[str]
    mean: np.ndarray
    std: np.ndarray
    path: str


def load_candidates(paths: Sequence[str | Path], device: str | torch.device = "cpu"
                    ) -> list[Candidate]:
    """Candidates from their checkpoints, in the order given; all must predict the same
    labels."""
    from specbridge.models.transfer import load_candidate

    out = []
    for p in paths:
        net, meta = load_candidate(p, device)
        out.append(Candidate(meta["candidate"], meta["model"], meta["strategy"],
                             meta["feature"], net, list(meta["labels"]),
                             np.asarray(meta["label_mean"], np.float64),
                             np.asarray(meta["label_std"], np.float64), str(p)))
    if len({tuple(c.labels) for c in out}) > 1:
        raise ValueError("candidates predict different labels")
    return out


def paired_shards(spectra_index: str | Path, embeddings_index: str | Path | None = None
                  ) -> list[dict[str, Any]]:
    """Shards of the spectra index, each with its embedding shard ('emb_path', or None),
    matched by first row."""
    shards = read_index(spectra_index)
    emb = {s["first_row"]: s for s in read_index(embeddings_index)} if embeddings_index else {}
    for s in shards:
        e = emb.get(s["first_row"])
        if embeddings_index and (e is None or e["n"] != s["n"]):
            raise ValueError(f"{embeddings_index} does not cover the shard of {s['path']}: "
                             "embed again")
        s["emb_path"] = e["path"] if e else None
    return shards


def read_inputs(shard: dict[str, Any], need: set[str]) -> dict[str, np.ndarray]:
    """Row fields of a shard plus the network inputs in ``need`` ('flux': (n, npix) float32,
    'spectrum': (n, 2, npix) flux and ivar, 'embedding': (n, d) float32), and 'usable' (n,)
    bool: no fatal flag and some data."""
    d = read_shard(shard["path"], ROW_FIELDS + ("flux", "ivar"))
    out = {f: d[f] for f in ROW_FIELDS}
    usable = ~flags.is_fatal(d["flags"]) & ((d["ivar"] > 0).sum(1) > 0)
    if "flux" in need:
        out["flux"] = network_input(d["flux"], d["ivar"])
    if "spectrum" in need:
        out["spectrum"] = np.stack([d["flux"], d["ivar"]], axis=1).astype(np.float32)
    if "embedding" in need:
        out["embedding"] = read_shard(shard["emb_path"], ("embedding",))["embedding"]
        usable &= np.isfinite(out["embedding"]).all(1)
    out["usable"] = usable
    return out


def predict(cand: Candidate, x: np.ndarray, usable: np.ndarray, batch_size: int = 1024,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(value, error), each (n, n_labels) float64 in physical units (K, dex); NaN where
    ``usable`` is False. error = the predicted standard deviation."""
    n, nl = x.shape[0], len(cand.labels)  # x: (n, n_in) or (n, 2, npix)
    value = np.full((n, nl), np.nan)
    error = np.full((n, nl), np.nan)
    idx = np.flatnonzero(usable)
    with torch.no_grad():
        for a in range(0, idx.size, batch_size):
            j = idx[a:a + batch_size]
            mu, lv = cand.net(torch.from_numpy(np.ascontiguousarray(x[j])).to(device))
            value[j] = mu.double().cpu().numpy() * cand.std + cand.mean
            error[j] = np.exp(0.5 * lv.double().cpu().numpy()) * cand.std
    return value, error


def predict_all(cands: Sequence[Candidate], inputs: dict[str, np.ndarray],
                batch_size: int = 1024, device: str | torch.device = "cpu"
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every candidate's (value, error) on the rows of ``inputs`` (see read_inputs)."""
    return {c.name: predict(c, inputs[c.feature], inputs["usable"], batch_size, device)
            for c in cands}
