"""HDF5 shards of preprocessed spectra, and the index that lists them.

A shard holds a contiguous block of manifest rows, all of them (a spectrum that could not be
processed keeps its row with ivar 0 and a flag). Datasets (n = rows, npix = grid pixels):

=============== ============ =================================================================
name            dtype, shape meaning
=============== ============ =================================================================
flux            f4 (n, npix) continuum-normalised flux on the common grid (rest frame)
ivar            f4 (n, npix) its inverse variance (0: no information)
mask            u1 (n, npix) pixel bits (specbridge.flags.PIXEL_BITS)
specid          i8 (n,)      TARGETID / OBSID (manifest SPECID)
star            i8 (n,)      key of the star (manifest STAR_KEY): splits follow it
manifest_row    i8 (n,)      row in the manifest
flags           i8 (n,)      spectrum flag bits (specbridge.flags.FLAG_BITS)
snr             f4 (n,)      manifest S/N
z               f8 (n,)      redshift used for the rest-frame shift
labels          f4 (n, 4)    reference teff, logg, feh, alpha_fe (NaN: none)
label_errors    f4 (n, 4)    their uncertainties
=============== ============ =================================================================

Attributes: ``complete`` (True once fully written), ``n``, ``first_row``, ``settings_hash``,
``specbridge_version``, ``survey``, ``grid_start``, ``grid_step``, ``npix``, and the reasons
of failed spectra. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from specbridge.atomic import atomic_output
from specbridge.labels import LABEL_NAMES  # order of the ``labels`` columns; kept importable

ROW_FIELDS = ("specid", "star", "manifest_row", "flags", "snr", "z", "labels",
              "label_errors")


def write_shard(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write one shard atomically; ``attrs`` get ``complete = True`` added last."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as h:
        n = int(arrays["flux"].shape[0])
        chunk_rows = max(1, min(n, 256))
        for name in ("flux", "ivar"):
            h.create_dataset(name, data=arrays[name].astype(np.float32, copy=False),
                             chunks=(chunk_rows, arrays[name].shape[1]) if n else None)
        h.create_dataset("mask", data=arrays["mask"].astype(np.uint8, copy=False))
        for name in ROW_FIELDS:
            h.create_dataset(name, data=arrays[name])
        h["labels"].attrs["names"] = list(LABEL_NAMES)
        for k, v in attrs.items():
            h.attrs[k] = v
        h.attrs["n"] = n
        h.attrs["complete"] = True


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
                 n: int) -> None:
    """One dataset per array and ``attrs``, written atomically; ``n`` (rows) and
    ``complete = True`` are set last, so shard_is_complete can trust them."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as h:
        for name, a in arrays.items():
            h.create_dataset(name, data=a)
        for k, v in attrs.items():
            h.attrs[k] = v
        h.attrs["n"] = int(n)
        h.attrs["complete"] = True


def write_embedding_shard(path: str | Path, arrays: dict[str, np.ndarray],
                          attrs: dict[str, Any]) -> None:
    """A shard of SpecFormer embeddings: ``embedding`` f4 (n, d), ``ood_score`` and
    ``ood_distance`` f4 (n,) and ``embedding_degraded`` f4 (n, d) when given, plus the row
    fields of the spectra shard it was made from; written atomically, ``complete`` last."""
    emb = arrays["embedding"].astype(np.float32, copy=False)
    extra = {k: arrays[k].astype(np.float32, copy=False)
             for k in ("ood_score", "ood_distance", "embedding_degraded") if k in arrays}
    write_arrays(path, {"embedding": emb, **extra, **{f: arrays[f] for f in ROW_FIELDS}},
                 attrs, emb.shape[0])


def shard_is_complete(path: str | Path, n: int, settings_hash: str) -> bool:
    """True if ``path`` is a finished shard of ``n`` rows made with the same settings."""
    try:
        with h5py.File(path, "r") as h:
            main = next(k for k in ("flux", "embedding", "specid") if k in h)
            return (bool(h.attrs.get("complete", False)) and int(h.attrs["n"]) == n
                    and h.attrs.get("settings_hash") == settings_hash
                    and h[main].shape[0] == n)
    except (OSError, KeyError, StopIteration):
        return False


def read_shard(path: str | Path, fields: tuple[str, ...] = ("flux", "ivar", "mask"),
               rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Read the named datasets (all rows, or ``rows``) of one shard."""
    out = {}
    with h5py.File(path, "r") as h:
        for f in fields:
            out[f] = h[f][()] if rows is None else h[f][rows]
    return out


def write_index(path: str | Path, shards: list[dict[str, Any]], attrs: dict[str, Any]) -> None:
    """The shard index: one row per shard (path relative to the index, first row, count)."""
    path = Path(path)
    shards = sorted(shards, key=lambda s: s["first_row"])
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as h:
        rel = [str(Path(s["path"]).relative_to(path.parent)) for s in shards]
        h.create_dataset("shard_path", data=np.array(rel, dtype=h5py.string_dtype()))
        h.create_dataset("first_row", data=np.array([s["first_row"] for s in shards], "i8"))
        h.create_dataset("n", data=np.array([s["n"] for s in shards], "i8"))
        fps = [s.get("fingerprint") for s in shards]
        if shards and all(fps):
            h.create_dataset("fingerprint", data=np.array(fps, dtype=h5py.string_dtype()))
            h.attrs["fingerprint"] = hashlib.sha256("\n".join(fps).encode()).hexdigest()[:24]
        for k, v in attrs.items():
            h.attrs[k] = v
        h.attrs["complete"] = True


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """Shards listed by an index: [{'path': absolute path, 'first_row', 'n', 'fingerprint'},
    ...]; 'fingerprint' is None in indexes written before shards were fingerprinted."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        names = [_text(p) for p in h["shard_path"][()]]
        fps = ([_text(f) for f in h["fingerprint"][()]] if "fingerprint" in h
               else [None] * len(names))
        return [{"path": str(path.parent / p), "first_row": int(f), "n": int(n),
                 "fingerprint": fp}
                for p, f, n, fp in zip(names, h["first_row"][()], h["n"][()], fps,
                                       strict=True)]


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def index_attrs(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as h:
        return dict(h.attrs)
