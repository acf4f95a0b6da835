"""Embeddings: the SpecFormer's embedding of every preprocessed spectrum, and its
out-of-domain score (:mod:`specbridge.inference.ood`), as HDF5 shards.

Each spectra shard gives one embedding shard (same rows, same order: nothing is lost; spectra
without usable pixels get NaN embeddings). The embedding is the mean over the output patch
tokens, standardised with the mean and std stored in the SpecFormer checkpoint (computed on its
LAMOST training set). The map over shards is :mod:`specbridge.parallel.executor`; a shard's
fingerprint chains its spectra shard's fingerprint and the checkpoint's SHA-256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from specbridge import __version__, flags
from specbridge.parallel.executor import (
    ShardJob,
    ShardResult,
    ShardTask,
    fingerprint,
    input_fingerprints,
    run_shards,
)
from specbridge.parallel.mpi import (
    bcast_from_rank0,
    cores_per_rank,
    node_rank_size,
    rank0_logger,
    run_or_abort,
)
from specbridge.stages import declared

CONFIG_SECTIONS: tuple[str, ...] = ()
BATCH = 256


def plan(model_path: str | Path, spectra_index: str | Path, out_dir: Path,
         ood_scores: bool = True, degraded_snr_min: float | None = None) -> list[ShardTask]:
    """One task per spectra shard, fingerprinted by that shard's fingerprint, the SpecFormer
    checkpoint's SHA-256, whether scores and degraded copies are computed and the code version
    (read on rank 0)."""
    from specbridge.digest import sha256
    from specbridge.errors import UserError, describe
    from specbridge.io.shards import read_index

    try:
        model_digest = sha256(model_path)
        shards = read_index(spectra_index)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or spectra_index}: {describe(exc)}"
                        ) from None
    fps = input_fingerprints(shards)
    return [ShardTask(i, s["first_row"], s["n"], str(out_dir / f"emb-{i:06d}.h5"),
                      fingerprint(fp, model_digest, ood_scores, degraded_snr_min,
                                  __version__),
                      inputs={"spectra": s["path"]})
            for i, (s, fp) in enumerate(zip(shards, fps, strict=True))]


def embed_rows(model: Any, flux: np.ndarray, ivar: np.ndarray, usable: np.ndarray,
               mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised embeddings (n, d) float32 of the ``usable`` rows of ``flux``/``ivar``
    (n, npix); NaN elsewhere. ``mean``/``std`` (d,) from the checkpoint. Computed on the
    model's device."""
    import torch

    emb = np.full((flux.shape[0], mean.size), np.nan, np.float32)
    idx = np.flatnonzero(usable)
    device = next(model.parameters()).device
    with torch.no_grad():
        for a in range(0, idx.size, BATCH):
            j = idx[a:a + BATCH]
            e = model.embed(torch.from_numpy(flux[j]).to(device),
                            torch.from_numpy(ivar[j]).to(device)).float().cpu().numpy()
            emb[j] = (e - mean) / std
    return emb


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, force: bool = False, ood_scores: bool = True,
        degraded_snr_min: float | None = None) -> int:
    """Embed the spectra of ``inputs['spectra']`` (index HDF5) with the SpecFormer
    ``inputs['model']``, with their out-of-domain scores unless not ``ood_scores`` (then
    NaN); writes ``outputs['index']`` and ``shards/`` beside it. With ``degraded_snr_min``
    each shard also holds ``embedding_degraded``: the embedding of one copy of each spectrum
    degraded to an S/N log-uniform between that and its own
    (:func:`specbridge.training.augment.degrade_snr`; the noise seeded by the shard's first
    row, so the same on any number of ranks), on which an S/N-augmented embedding MLP
    trains."""
    import time

    cfg = declared(cfg, CONFIG_SECTIONS)
    if degraded_snr_min is not None and not degraded_snr_min > 0:
        from specbridge.errors import UserError
        raise UserError(f"--degraded-snr-min {degraded_snr_min}: must be a positive S/N")
    log = rank0_logger("specbridge.embed", comm)
    out = Path(outputs["index"])
    t0 = time.monotonic()
    tasks = bcast_from_rank0(comm, lambda: plan(inputs["model"], inputs["spectra"],
                                                out.parent / "shards", ood_scores,
                                                degraded_snr_min))
    return run_or_abort(comm, log, _run, inputs, out, tasks, comm, log, force, t0,
                        ood_scores, degraded_snr_min)


def _run(inputs, out: Path, tasks, comm, log, force: bool, t0: float,
         ood_scores: bool = True, degraded_snr_min: float | None = None) -> int:
    import time

    import torch

    from specbridge.inference.ood import density_distance, spectrum_scores
    from specbridge.io.shards import ROW_FIELDS, read_shard, write_embedding_shard
    from specbridge.models.checkpoint import load_model
    from specbridge.parallel.ddp import inference_device
    from specbridge.training.augment import degrade_snr

    local_rank, local_size = node_rank_size(comm)
    torch.set_num_threads(cores_per_rank(local_size))
    device = inference_device(local_rank)
    model, ck = load_model(inputs["model"], kinds=("specformer",), device=device)
    log.info("SpecFormer on %s", device)
    if "embed_mean" not in ck.meta:
        from specbridge.errors import UserError
        raise UserError(f"{inputs['model']}: a SpecFormer checkpoint without embedding "
                        "statistics (pretrain it again)")
    mean = np.asarray(ck.meta["embed_mean"], np.float32)
    std = np.asarray(ck.meta["embed_std"], np.float32)
    density = ck.meta.get("ood_density")

    def compute(task: ShardTask) -> ShardResult:
        d = read_shard(task.inputs["spectra"], ("flux", "ivar") + ROW_FIELDS)
        usable = ~flags.is_fatal(d["flags"]) & ((d["ivar"] > 0).sum(1) > 0)
        emb = embed_rows(model, d["flux"], d["ivar"], usable, mean, std)
        score = (spectrum_scores(model, d["flux"], d["ivar"], usable) if ood_scores
                 else np.full(len(usable), np.nan, np.float32))
        dist = density_distance(emb, density).astype(np.float32)
        arrays = {"embedding": emb, "ood_score": score, "ood_distance": dist,
                  **{f: d[f] for f in ROW_FIELDS}}
        if degraded_snr_min is not None:
            gen = torch.Generator().manual_seed(int(task.first_row))
            flux, ivar = degrade_snr(torch.from_numpy(d["flux"]), torch.from_numpy(d["ivar"]),
                                     1.0, degraded_snr_min, gen)
            arrays["embedding_degraded"] = embed_rows(model, flux.numpy(), ivar.numpy(),
                                                      usable, mean, std)
        return ShardResult(arrays)

    job = ShardJob("embed", tasks, compute, out, {
        "dim": int(mean.size), "spectra": str(inputs["spectra"]),
        "specformer": str(inputs["model"]),
        "degraded_snr_min": -1.0 if degraded_snr_min is None else float(degraded_snr_min),
        "ood_score_quantiles": json.dumps(list(ck.meta.get("ood_score_quantiles", []))),
        "ood_distance_quantiles": json.dumps(list(ck.meta.get("ood_distance_quantiles", [])))},
        write=lambda p, a, at, _n: write_embedding_shard(p, a, at), force=force)
    s = run_shards(job, comm, log)
    if s is not None:
        log.info("wrote %s: %d embedding shards (%d skipped as complete), %d spectra in %.1f s",
                 out, s.n_shards, s.skipped, s.n_computed, time.monotonic() - t0)
    return 0
