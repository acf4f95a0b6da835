"""Checkpoints: one layout for every model kind and for the training loop's resume files.

A checkpoint is a ``torch.save`` dictionary of tensors and plain Python values only::

    {"format": "specbridge-checkpoint", "version": 1, "kind": str, "arch": dict,
     "state_dict": {name: tensor}, "meta": dict, "training": dict (resume files only)}

so it is read with ``torch.load(..., weights_only=True)``: loading never runs code from the
file. ``arch`` and ``meta`` hold JSON-able values (numpy arrays become lists). Kinds:

* ``mlp``, ``emb_mlp``: SpectrumMLP on flux / on SpecFormer embeddings. arch ``npix``,
  ``hidden``, ``dropout``, ``n_labels``; meta ``labels``, ``label_mean``, ``label_std``
  (physical units), ``history``, ``best_epoch``, ``val_robust_sigma``, ``val_label_spread``.
* ``specformer``: arch ``npix``, ``patch_size``, ``patch_stride``, ``d_model``, ``n_layers``,
  ``n_heads`` (+ the rest of its config section, e.g. ``pool_regions``, ``embed_stats_token``,
  ``flux_scale``); meta
  ``embed_mean``, ``embed_std`` (embed_dim,), ``history``, ``best_epoch``,
  ``val_loss``, ``val_patch_mean_loss``.
* ``candidate``: the servable fine-tuned module (see :mod:`specbridge.models.transfer`);
  arch as ``transfer.architecture`` / ``specformer_architecture``; meta ``candidate``,
  ``model``, ``strategy``, ``feature``, ``labels``, ``label_mean``, ``label_std`` and the
  training record.
* ``resume``: the training loop's ``last.pt`` / ``best.pt``; meta holds the caller's extra and
  ``resume_key``, ``training`` the optimizer, scheduler, loop state and RNG states.

Every meta may carry ``provenance`` (specbridge version, config digest, creation time). Files of
the two earlier layouts (``model``/``extra`` and ``state_dict``/``arch`` pickles holding numpy
arrays) are still read, with only numpy's array-rebuilding globals allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from specbridge.atomic import atomic_output
from specbridge.errors import UserError

FORMAT = "specbridge-checkpoint"
VERSION = 1
MODEL_KINDS = ("mlp", "emb_mlp", "specformer", "candidate")
RESUME_KIND = "resume"
KINDS = (*MODEL_KINDS, RESUME_KIND)

_MLP_ARCH = ("npix", "hidden", "dropout")
_SPECFORMER_META = ("embed_mean", "embed_std")


@dataclass
class Checkpoint:
    """A checkpoint in memory: ``kind`` (one of :data:`KINDS`), the architecture that
    :func:`build_model` rebuilds the module from, its weights, JSON-able metadata, and (resume
    files only) the training state."""

    kind: str
    arch: dict
    state_dict: dict
    meta: dict
    training: dict | None = None


def _numpy_globals() -> list[Any]:
    """What numpy arrays and scalars in the earlier layouts need to be rebuilt: the array
    reconstructor (under numpy 2's and numpy 1's module names), ndarray, dtype and the
    numeric/string dtype classes. None of them runs code named by the file."""
    core = np._core.multiarray  # type: ignore[attr-defined]
    dtypes = sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGU"}, key=str)
    return [np.ndarray, np.dtype, core._reconstruct, core.scalar, *dtypes,
            (core._reconstruct, "numpy.core.multiarray._reconstruct"),
            (core.scalar, "numpy.core.multiarray.scalar")]


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays/scalars and tensors turned into (nested) lists and Python
    numbers, tuples into lists, paths into strings and mapping keys into strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata")


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError unless ``obj`` is tensors and plain containers/primitives only."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (torch.Tensor, str, bool, int, float))):
        raise TypeError(f"checkpoint {where} holds a {type(obj).__name__}")


def config_digest(cfg: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the configuration ``cfg`` as canonical JSON."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def provenance(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Who wrote a checkpoint: specbridge version, UTC creation time (ISO 8601) and, given the
    configuration the stage read, its digest."""
    from specbridge import __version__

    out: dict[str, Any] = {"specbridge_version": __version__,
                           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if cfg is not None:
        out["config_sha256"] = config_digest(cfg)
    return out


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically in the one layout (``arch`` and ``meta`` made
    JSON-able, a ``provenance`` added to meta when it has none)."""
    if ckpt.kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {ckpt.kind!r}; one of {KINDS}")
    meta = jsonable(ckpt.meta)
    meta.setdefault("provenance", provenance())
    blob: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": ckpt.kind,
                            "arch": jsonable(ckpt.arch), "state_dict": dict(ckpt.state_dict),
                            "meta": meta}
    if ckpt.training is not None:
        blob["training"] = ckpt.training
    _check_plain(blob, "checkpoint")
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)


def _refusal_reason(exc: BaseException) -> str:
    """One line saying why torch refused or failed to read a file."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return f"it would load {found.group(1).rstrip('.,:')}, which is not allowed"
    if "Can only build" in text:
        return "it would build objects other than tensors and plain values"
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation",
              "Re-running", "In PyTorch")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(boiler)]
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def _read(path: Path) -> Any:
    """The unpickled content of ``path`` under ``weights_only=True``; UserError otherwise."""
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise UserError(f"{path}: not a specbridge checkpoint (empty file)")
            fh.seek(0)
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(fh, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # whatever torch raises on a foreign or hostile file
        raise UserError(f"{path}: not a specbridge checkpoint "
                        f"({_refusal_reason(exc)})") from None


def _legacy_pretrained(blob: dict) -> Checkpoint:
    """A pretrained checkpoint of the ``model``/``extra`` layout."""
    extra = dict(blob["extra"])
    kind = extra.pop("model", None)
    rest = {k: v for k, v in blob.items() if k not in ("model", "extra")}
    if kind == "specformer":
        meta = {k: extra.pop(k) for k in _SPECFORMER_META if k in extra}
        arch = extra
    else:
        arch = {k: extra.pop(k) for k in _MLP_ARCH if k in extra}
        arch["n_labels"] = len(extra.get("labels", []))
        meta = extra
    return Checkpoint(str(kind), jsonable(arch), dict(blob["model"]), jsonable({**meta, **rest}))


def _legacy_resume(blob: dict) -> Checkpoint:
    """A training-loop file of the ``model``/``optimizer``/``extra`` layout."""
    training = {k: blob[k] for k in ("optimizer", "scheduler", "state", "rng") if k in blob}
    training["state"] = jsonable(training.get("state", {}))
    return Checkpoint(RESUME_KIND, {}, dict(blob["model"]), jsonable(blob["extra"]), training)


def _legacy_candidate(blob: dict) -> Checkpoint:
    """A candidate of the ``arch``/``state_dict``/metadata layout."""
    meta = {k: v for k, v in blob.items() if k not in ("arch", "state_dict")}
    return Checkpoint("candidate", jsonable(blob["arch"]), dict(blob["state_dict"]),
                      jsonable(meta))


def _from_blob(blob: Any) -> Checkpoint:
    """The Checkpoint of an unpickled dictionary of the current or an earlier layout; ValueError
    (reason) when it is none of them."""
    if not isinstance(blob, dict):
        raise ValueError(f"holds a {type(blob).__name__}, not a dictionary")
    if blob.get("format") == FORMAT:
        if blob.get("version") != VERSION:
            raise ValueError(f"layout version {blob.get('version')!r}, this specbridge reads "
                             f"{VERSION}")
        kind = blob.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        return Checkpoint(kind, dict(blob.get("arch") or {}), dict(blob["state_dict"]),
                          dict(blob.get("meta") or {}), blob.get("training"))
    if "model" in blob and isinstance(blob.get("extra"), dict):
        return _legacy_resume(blob) if "optimizer" in blob else _legacy_pretrained(blob)
    if "arch" in blob and "state_dict" in blob:
        return _legacy_candidate(blob)
    raise ValueError("unknown layout")


def _describe(kind: str) -> str:
    """How a message names what a checkpoint of ``kind`` holds."""
    return {"candidate": "a fine-tuned candidate",
            RESUME_KIND: "training state to resume"}.get(kind, f"model {kind!r}")


def _wrong_kind(path: Path, found: str, kinds: tuple[str, ...]) -> str:
    """The one-line message for a checkpoint of kind ``found`` where ``kinds`` are expected."""
    if kinds == ("candidate",):
        return f"{path}: not a fine-tuned candidate checkpoint (it holds {_describe(found)})"
    want = repr(kinds[0]) if len(kinds) == 1 else "one of " + ", ".join(map(repr, kinds))
    return f"{path} holds {_describe(found)}, not {want}"


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] | None = None) -> Checkpoint:
    """Read the checkpoint at ``path`` (current or earlier layout) without running code from
    it; tensors land on the CPU. ``kinds``: the kinds accepted (None: any).

    Raises UserError (one line naming the file) for a missing or unreadable file, a file that
    is not a specbridge checkpoint (including pickles that would build arbitrary objects), and
    a checkpoint of another kind.
    """
    path = Path(path)
    blob = _read(path)
    try:
        ckpt = _from_blob(blob)
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"lacks {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"{path}: not a specbridge checkpoint ({reason})") from None
    if kinds is not None and ckpt.kind not in kinds:
        raise UserError(_wrong_kind(path, ckpt.kind, tuple(kinds)))
    return ckpt


def mlp_arch(npix: int, hidden: Any, n_labels: int, dropout: float) -> dict[str, Any]:
    """The arch of a SpectrumMLP (``mlp``, ``emb_mlp``): input width ``npix`` (pixels or
    embedding dimensions), hidden widths, number of labels, dropout probability."""
    return {"npix": int(npix), "hidden": [int(h) for h in hidden], "n_labels": int(n_labels),
            "dropout": float(dropout)}


def build_model(kind: str, arch: Mapping[str, Any]) -> nn.Module:
    """An untrained module of ``kind`` with architecture ``arch`` (see the module docstring);
    the one place modules are built from an architecture. KeyError on a missing arch key."""
    from specbridge.models.mlp import SpectrumMLP
    from specbridge.models.specformer import SpecFormer

    if kind in ("mlp", "emb_mlp"):
        return SpectrumMLP(arch["npix"], arch["hidden"], arch["n_labels"], arch["dropout"])
    if kind == "specformer":
        return SpecFormer(arch["npix"], arch["patch_size"], arch["patch_stride"],
                          arch["d_model"], arch["n_layers"], arch["n_heads"],
                          score_span=int(arch.get("mask_span", 40)),
                          pool_regions=int(arch.get("pool_regions", 1)),
                          embed_stats_token=bool(arch.get("embed_stats_token", False)),
                          flux_scale=arch.get("flux_scale"))
    if kind == "candidate":
        return _build_servable(arch)
    raise ValueError(f"no module for checkpoint kind {kind!r}")


def _build_servable(arch: Mapping[str, Any]) -> nn.Module:
    """The servable module of a fine-tuned candidate: a SpectrumMLP, a ResidualAdapter on one,
    or (``arch['kind'] == 'specformer'``) a SpecFormerRegressor."""
    from specbridge.models.transfer import ResidualAdapter, SpecFormerRegressor

    if arch.get("kind") == "specformer":
        sf, head = arch["specformer"], arch["head"]
        return SpecFormerRegressor(
            build_model("specformer", sf),
            build_model("mlp", {**head, "npix": head["n_in"]}),
            torch.zeros(arch["embed_dim"]), torch.ones(arch["embed_dim"]))
    base = build_model("mlp", {**arch, "npix": arch["n_in"]})
    if arch.get("adapter_width"):
        return ResidualAdapter(base, arch["adapter_width"])
    return base


def load_model(path: str | Path, kinds: tuple[str, ...] | None = None,
               device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """(module with the checkpoint's weights, on ``device``, in eval mode; the checkpoint) of a
    model checkpoint at ``path``. ``kinds`` as in :func:`load_checkpoint` (resume files have no
    module). UserError when the architecture or the weights do not fit."""
    ckpt = load_checkpoint(path, kinds)
    try:
        net = build_model(ckpt.kind, ckpt.arch)
        net.load_state_dict(ckpt.state_dict)
    except KeyError as exc:
        raise UserError(f"{path}: not a specbridge checkpoint (architecture lacks "
                        f"{exc})") from None
    except (ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: weights do not fit the architecture ({first})") from None
    return net.to(device).eval(), ckpt
