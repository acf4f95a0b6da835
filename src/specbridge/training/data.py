"""Labelled spectra streamed from HDF5 shards in global batches.

Every rank walks the same global sequence of batches (shard order and shuffling seeded by
(seed, epoch)) and takes its own slice of each global batch, so W ranks with batches of B / W
see exactly what one rank with batch B sees. At most ``buffer_shards`` shards are in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specbridge import flags
from specbridge.io.shards import LABEL_NAMES, read_index, read_shard
from specbridge.splits import SPLIT_CODES, assign_split, split_fraction


@dataclass
class Batch:
    """x: (b, npix) float32 network input (normalised flux - 1, 0 where ivar = 0);
    y, y_err: (b, n_labels) standardised labels and errors (NaN: missing)."""

    x: np.ndarray
    y: np.ndarray
    y_err: np.ndarray
    flux: np.ndarray | None = None
    ivar: np.ndarray | None = None
    x_degraded: np.ndarray | None = None  # (b, d) embeddings of S/N-degraded copies


def network_input(flux: Any, ivar: Any) -> Any:
    """(n, npix) float32: normalised flux minus 1, pixels without information set to 0; numpy
    arrays in, numpy out; torch tensors in, a tensor out on their device."""
    if isinstance(flux, np.ndarray):
        return np.where(ivar > 0, flux - 1.0, 0.0).astype(np.float32)
    import torch

    return torch.where(ivar > 0, flux - 1.0, torch.zeros_like(flux)).float()


class LabelledShards:
    """The usable, labelled rows of a preprocessed survey, split by a hash of the star key.

    ``index``: one index HDF5, or several (their shards read as one set, e.g. a pretraining
    corpus of two surveys).

    Rows kept: no fatal flag, no BAD_LABEL / AMBIGUOUS_MATCH, at least one of ``labels`` finite,
    and in ``split`` ('train', 'val' or 'test', by ``assign_split(star, val_fraction,
    test_fraction)``: by star, so repeat visits share a split), and whose star is not in
    ``exclude_stars`` (star keys held out, e.g. the DESI validation and test stars; the count
    of rows dropped for it is ``n_excluded``). ``max_rows`` keeps at most that many rows,
    chosen by a second hash of the star key (a fine-tuning set of a given size; a smaller size
    is a subset of a larger one).
    """

    def __init__(self, index: str | Sequence[str], labels: Sequence[str], split: str,
                 val_fraction: float,
                 require_labels: bool = True, with_ivar: bool = False,
                 feature: str = "flux", test_fraction: float = 0.0,
                 max_rows: int | None = None, exclude_stars: np.ndarray | None = None,
                 with_degraded: bool = False):
        if split not in SPLIT_CODES:
            raise ValueError(f"split {split!r} is not one of {sorted(SPLIT_CODES)}")
        indexes = [index] if isinstance(index, str | os.PathLike) else list(index)
        self.shards = [s for ix in indexes for s in read_index(ix)]
        self.cols = [LABEL_NAMES.index(lab) for lab in labels]
        self.with_ivar = with_ivar
        # feature "embedding": batches also carry the embeddings of degraded copies
        self.with_degraded = with_degraded
        if with_degraded and feature != "embedding":
            raise ValueError("with_degraded needs feature 'embedding'")
        # "flux": network input (normalised flux - 1); "spectrum": (n, 2, npix) flux and ivar;
        # "embedding": SpecFormer embeddings (embedding shards)
        self.feature = feature
        bad = flags.FATAL_MASK
        if require_labels:
            bad |= flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
        self.rows: list[np.ndarray] = []
        kept_labels: list[np.ndarray] = []
        subset_keys: list[np.ndarray] = []  # second ID hash, for max_rows
        self.n_excluded = 0
        for s in self.shards:
            d = read_shard(s["path"], ("star", "flags", "labels"))
            lab = d["labels"][:, self.cols]
            keep = (d["flags"] & bad) == 0
            if require_labels:
                keep &= np.isfinite(lab).any(axis=1)
            keep &= assign_split(d["star"], val_fraction, test_fraction) == SPLIT_CODES[split]
            if exclude_stars is not None and len(exclude_stars):
                held = keep & np.isin(d["star"], exclude_stars)
                self.n_excluded += int(held.sum())
                keep &= ~held
            self.rows.append(np.flatnonzero(keep))
            kept_labels.append(lab[keep])
            if max_rows is not None:
                subset_keys.append(split_fraction(d["star"][keep], salt=1))
        if max_rows is not None and sum(r.size for r in self.rows) > max_rows:
            cut = np.sort(np.concatenate(subset_keys))[max_rows - 1]
            for k, key in enumerate(subset_keys):
                self.rows[k] = self.rows[k][key <= cut]
                kept_labels[k] = kept_labels[k][key <= cut]
        self.n = int(sum(r.size for r in self.rows))
        self._labels = np.concatenate(kept_labels).astype(np.float64) if kept_labels else \
            np.zeros((0, len(self.cols)))

    @property
    def labels(self) -> np.ndarray:
        """(n, n_labels) float64 labels of the kept rows, physical units (NaN: missing)."""
        return self._labels

    def label_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (n_labels,) of the kept rows' labels (physical units)."""
        return np.nanmean(self._labels, axis=0), np.nanstd(self._labels, axis=0)

    def _load(self, k: int) -> dict[str, np.ndarray]:
        rows = self.rows[k] if self.rows[k].size else slice(0, 0)
        if self.feature == "embedding":
            names = ("embedding", "labels", "label_errors")
            if self.with_degraded:
                names += ("embedding_degraded",)
            d = read_shard(self.shards[k]["path"], names, rows=rows)
            out = {"x": d["embedding"].astype(np.float32), "y": d["labels"][:, self.cols],
                   "e": d["label_errors"][:, self.cols]}
            if self.with_degraded:
                out["x_degraded"] = d["embedding_degraded"].astype(np.float32)
            return out
        d = read_shard(self.shards[k]["path"], ("flux", "ivar", "labels", "label_errors"),
                       rows=rows)
        if self.feature == "spectrum":  # raw flux and ivar, for the SpecFormer
            x = np.stack([d["flux"], d["ivar"]], axis=1).astype(np.float32)
        else:
            x = network_input(d["flux"], d["ivar"])
        out = {"x": x, "y": d["labels"][:, self.cols], "e": d["label_errors"][:, self.cols]}
        if self.with_ivar:
            out["flux"] = d["flux"].astype(np.float32)
            out["ivar"] = d["ivar"].astype(np.float32)
        return out

    def batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                mean: np.ndarray | None = None, std: np.ndarray | None = None,
                shuffle: bool = True, buffer_shards: int = 4, drop_last: bool = True,
                ) -> Iterator[Batch]:
        """This rank's slices of the epoch's global batches (``batch_size`` = global size,
        a multiple of ``world``)."""
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} not divisible by {world} ranks")
        local = batch_size // world
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.shards)) if shuffle else np.arange(len(self.shards))
        mean = np.zeros(len(self.cols)) if mean is None else mean
        std = np.ones(len(self.cols)) if std is None else std
        keys = ("x", "y", "e") + (("flux", "ivar") if self.with_ivar else ()) + (
            ("x_degraded",) if self.with_degraded else ())
        pool: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        pending = list(order)
        while pending or pool["x"]:
            while pending and len(pool["x"]) < buffer_shards:
                d = self._load(int(pending.pop(0)))
                for key in pool:
                    pool[key].append(d[key])
            cat = {key: np.concatenate(v) if v else np.zeros((0,)) for key, v in pool.items()}
            n = cat["x"].shape[0]
            perm = rng.permutation(n) if shuffle else np.arange(n)
            nfull = n // batch_size
            last = not pending
            stop = n if (last and not drop_last) else nfull * batch_size
            for b0 in range(0, stop, batch_size):
                idx = perm[b0:b0 + batch_size]
                mine = idx[rank * local:(rank + 1) * local] if idx.size == batch_size else \
                    np.array_split(idx, world)[rank]
                yield Batch(cat["x"][mine], ((cat["y"][mine] - mean) / std).astype(np.float32),
                            (cat["e"][mine] / std).astype(np.float32),
                            cat["flux"][mine] if self.with_ivar else None,
                            cat["ivar"][mine] if self.with_ivar else None,
                            cat["x_degraded"][mine] if self.with_degraded else None)
            rest = perm[stop:]
            pool = {key: ([cat[key][rest]] if rest.size and not last else [])
                    for key in pool}
            if last:
                break


def holdout_stars(index: str, val_fraction: float, test_fraction: float,
                  labelled_only: bool = True) -> np.ndarray:
    """Sorted unique star keys (int64) of the rows of the preprocessed survey ``index`` that
    fall in its validation or test split (``assign_split(star, val_fraction,
    test_fraction)``): with ``labelled_only`` the labelled, usable rows (the stars another
    survey's supervised training must not see), else every row, labelled or not (the stars
    whose spectra must stay out of self-supervised pretraining on that survey)."""
    bad = flags.FATAL_MASK | flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
    keys = []
    for s in read_index(index):
        d = read_shard(s["path"], ("star", "flags", "labels") if labelled_only else ("star",))
        keep = assign_split(d["star"], val_fraction, test_fraction) != SPLIT_CODES["train"]
        if labelled_only:
            keep &= ((d["flags"] & bad) == 0) & np.isfinite(d["labels"]).any(axis=1)
        keys.append(d["star"][keep])
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
