"""Predictions of fine-tuned candidates on preprocessed DESI shards: the one code path that
evaluation and sharded inference share (:func:`predict_shard` makes one prediction shard)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
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
    """A servable fine-tuned model. ``feature`` is its input kind: 'flux' (network input from
    the spectra shards), 'spectrum' (flux and ivar, for the SpecFormer) or 'embedding'
    (SpecFormer embeddings); ``mean``/``std`` (n_labels,) undo the label standardisation;
    ``support``: {'lo', 'hi'} (n_labels,) range of the labels it was pretrained on (None for
    checkpoints made before it was stored)."""

    name: str
    model: str
    strategy: str
    feature: str
    net: nn.Module
    labels: list[str]
    mean: np.ndarray
    std: np.ndarray
    path: str
    support: dict[str, list[float]] | None = None


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
                             np.asarray(meta["label_std"], np.float64), str(p),
                             meta.get("label_support")))
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


FEATURES = ("flux", "spectrum", "embedding")


def read_inputs(shard: dict[str, Any], need: set[str]) -> dict[str, np.ndarray]:
    """Row fields of a shard, the network inputs in ``need`` ('flux': (n, npix) float32,
    'spectrum': (n, 2, npix) flux and ivar, 'embedding': (n, d) float32) and one usable mask
    per input kind, each (n,) bool: 'usable_flux' and 'usable_spectrum' (no fatal flag and
    some pixel with ivar > 0), and with 'embedding' in ``need`` 'usable_embedding' (that and
    a finite embedding). A star whose embedding is not finite is thus still predicted by the
    candidates on the spectra. 'usable' (= 'usable_flux') is kept for callers that predict
    from the spectra only."""
    unknown = set(need) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown input kinds {sorted(unknown)}; known: {FEATURES}")
    d = read_shard(shard["path"], ROW_FIELDS + ("flux", "ivar"))
    out = {f: d[f] for f in ROW_FIELDS}
    has_data = ~flags.is_fatal(d["flags"]) & ((d["ivar"] > 0).sum(1) > 0)
    out["usable_flux"] = has_data
    out["usable_spectrum"] = has_data.copy()
    if "flux" in need:
        out["flux"] = network_input(d["flux"], d["ivar"])
    if "spectrum" in need:
        out["spectrum"] = np.stack([d["flux"], d["ivar"]], axis=1).astype(np.float32)
    if "embedding" in need:
        out["embedding"] = read_shard(shard["emb_path"], ("embedding",))["embedding"]
        out["usable_embedding"] = has_data & np.isfinite(out["embedding"]).all(1)
    out["usable"] = has_data.copy()
    return out


def usable_for(feature: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The usable mask (n,) of ``inputs`` (see read_inputs) for a candidate on ``feature``."""
    key = f"usable_{feature}"
    if key in inputs:
        return inputs[key]
    mask = inputs["usable"]  # inputs made without the per-kind masks
    if feature == "embedding":
        mask = mask & np.isfinite(inputs["embedding"]).all(1)
    return mask


def predict(cand: Candidate, x: np.ndarray, usable: np.ndarray, batch_size: int = 1024,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(value, error), each (n, n_labels) float64 in physical units (K, dex); NaN where
    ``usable`` (the mask of the candidate's own input kind, e.g.
    ``read_inputs(...)[f"usable_{cand.feature}"]``) is False. error = the predicted
    standard deviation."""
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
    """Every candidate's (value, error) on the rows of ``inputs`` (see read_inputs), each
    candidate on the rows usable for its own input kind (``usable_<feature>``)."""
    return {c.name: predict(c, inputs[c.feature], usable_for(c.feature, inputs), batch_size,
                            device)
            for c in cands}


def predict_shard(cands: Sequence[Candidate], shard: dict[str, Any], labels: Sequence[str],
                  selection: Mapping[tuple[str, str], str], routing: Mapping[str, Any],
                  batch_size: int,
                  calibration: Mapping[tuple[str, str], Sequence[float]] | None = None,
                  device: str | torch.device = "cpu",
                  ) -> tuple[dict[str, np.ndarray], Counter]:
    """Arrays of one prediction shard (docs/datamodel/predictions.md) and the count of
    spectra that got no prediction, by reason.

    ``shard``: an entry of :func:`paired_shards`; ``selection[(label, regime)]``: candidate
    name; ``routing``: 'router', 'threshold', 'blend_width', and optionally 'blend' (see
    :func:`specbridge.inference.routing.route`; default: linear if blend_width > 0 else
    hard) and 'router_passes' (1); ``calibration``: {(candidate, label): (scale, floor,
    snr_slope)} (:mod:`specbridge.evaluation.calibration`): each candidate's errors are
    recalibrated at the spectrum's S/N before routing, and stored so. Each candidate
    predicts the rows usable for its own input kind, so a star with a non-finite embedding
    keeps the values of the candidates on the spectra. Flags added to the input flags:
    ``NOT_ROUTED`` (not fatal) where the router gave no [Fe/H] but some label got a value (see
    :func:`specbridge.inference.routing.route`); ``PREDICTION_FAILED`` where a spectrum
    without a fatal flag got no label at all. A row with some labels NaN and others
    present is not flagged as failed."""
    from specbridge.evaluation.calibration import apply_all
    from specbridge.inference.ood import ood_flags
    from specbridge.inference.routing import route_passes

    d = read_inputs(shard, {c.feature for c in cands})
    preds = apply_all(predict_all(cands, d, batch_size, device), list(labels), calibration,
                      d["snr"])
    names = [c.name for c in cands]
    r = route_passes(preds, names, list(labels), selection, routing["router"],
                     routing["threshold"], routing["blend_width"], routing.get("blend"),
                     int(routing.get("router_passes", 1)))
    fl = d["flags"].astype(np.int64)
    ood = routing.get("ood") or {}
    score = embedding_shard_scores(shard, d["specid"].shape[0])
    dist = embedding_shard_scores(shard, d["specid"].shape[0], "ood_distance")
    fl |= ood_flags(score, ood.get("threshold"), r.value, r.error, _support(cands),
                    _others(preds, names, r.served, cands), float(ood.get("z_max", 5.0)),
                    dist, ood.get("distance_threshold"), float(ood.get("percentile", 99.0)))
    some = np.isfinite(r.value).any(1)
    failed = ~some & ~flags.is_fatal(fl)
    fl[failed] |= flags.flag("PREDICTION_FAILED")
    fl[r.fallback & some] |= flags.flag("NOT_ROUTED")
    counts: Counter = Counter()
    if failed.any():
        any_input = np.zeros(failed.shape, bool)
        for c in cands:
            any_input |= usable_for(c.feature, d)
        no_input = int((failed & ~any_input).sum())
        if no_input:
            counts["no prediction (no usable pixels or non-finite input)"] = no_input
        if int(failed.sum()) - no_input:
            counts["no prediction (the selected candidates gave no value)"] = \
                int(failed.sum()) - no_input
    arrays = {"specid": d["specid"], "manifest_row": d["manifest_row"], "flags": fl,
              "snr": d["snr"], "ood_score": score.astype(np.float32),
              "ood_distance": dist.astype(np.float32),
              "value": r.value.astype(np.float32),
              "error": r.error.astype(np.float32), "regime": r.regime, "served": r.served,
              "candidate_value": np.stack([preds[n][0] for n in names]).astype(np.float32),
              "candidate_error": np.stack([preds[n][1] for n in names]).astype(np.float32)}
    return arrays, counts


def embedding_shard_scores(shard: Mapping[str, Any], n: int, key: str = "ood_score"
                           ) -> np.ndarray:
    """(n,) out-of-domain scores (``key`` 'ood_score', or 'ood_distance') of the shard's rows
    from its embedding shard (NaN without one, or for one written before they were stored)."""
    import h5py

    if shard.get("emb_path"):
        with h5py.File(shard["emb_path"], "r") as h:
            if key in h:
                return h[key][()].astype(np.float64)
    return np.full(n, np.nan)


def _support(cands: Sequence[Candidate]) -> dict[str, Any] | None:
    """The training-label support the served labels are judged against
    (:func:`specbridge.inference.ood.outside_support`): the widest range among the
    candidates' ('lo', 'hi') and the joint check of the first candidate that stores one
    (every candidate inherits its pretrained model's, all from the LAMOST labels); None if
    no candidate stores a support."""
    sup = [c.support for c in cands if c.support]
    if not sup:
        return None
    out: dict[str, Any] = {k: v for k, v in next(
        (s for s in sup if s.get("distance_quantiles")), {}).items() if k not in ("lo", "hi")}
    out.update(lo=np.min([s["lo"] for s in sup], axis=0).tolist(),
               hi=np.max([s["hi"] for s in sup], axis=0).tolist())
    return out


def _others(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str],
            served: np.ndarray, cands: Sequence[Candidate]
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fine-tuned (not zero-shot) candidates' (value, error), each (n, n_labels), with
    NaN where that candidate is the one serving the label (``served`` (n, n_labels): index
    into ``names``), so the served value is only compared with the others."""
    out = []
    for c in cands:
        if c.strategy == "zeroshot":
            continue
        v, e = preds[c.name]
        own = served == names.index(c.name)
        out.append((np.where(own, np.nan, v), e))
    return out
