"""Preprocessing: the manifest's spectra onto the common grid, as HDF5 shards.

One MPI job in the desispec manner (the map over shards is :mod:`specbridge.parallel.executor`):
rank 0 reads the manifest and broadcasts the columns needed; shards are contiguous blocks of
manifest rows weighted by the number of spectra to process; a shard's fingerprint covers the
grid and preprocessing settings, the code version and every manifest value of its rows, so a
changed manifest or setting recomputes exactly the shards it touches. Failures are flagged per
spectrum and counted per reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from specbridge import __version__, flags
from specbridge.io.manifest import read_manifest_columns
from specbridge.labels import LABELS
from specbridge.parallel.executor import ShardJob, ShardResult, ShardTask, fingerprint, run_shards
from specbridge.parallel.mpi import (
    bcast_from_rank0,
    comm_rank_size,
    cores_per_rank,
    rank0_logger,
    ranks_on_node,
    run_or_abort,
)
from specbridge.stages import declared

CONFIG_SECTIONS = ("grid", "preprocess")

_LABELS = tuple(lab.column for lab in LABELS)  # the shards' label order
_NUMERIC = ("ROW", "SPECID", "STAR_KEY", "Z", "SNR", "FLAGS", *_LABELS,
            *(f"{c}_ERR" for c in _LABELS))


def read_manifest_rows(path: str | Path) -> dict[str, Any]:
    """What preprocessing needs of a manifest: ``files`` (nfiles,) and ``file_idx`` (n,), and
    per row ``row``, ``specid``, ``star`` (the star key), ``z``, ``snr``, ``flags``,
    ``labels`` and ``label_errors``
    (n, 4) (teff K, logg dex, feh dex, alpha_fe dex; NaN: none), and ``survey``."""
    t = read_manifest_columns(path, ("FILE", *_NUMERIC))
    return {"files": t["files"], "file_idx": t["file_idx"], "survey": np.array(t["survey"]),
            "row": t["ROW"].astype(np.int32), "specid": t["SPECID"].astype(np.int64),
            "star": t["STAR_KEY"].astype(np.int64),
            "z": t["Z"].astype(np.float64), "snr": t["SNR"].astype(np.float32),
            "flags": t["FLAGS"].astype(np.int64),
            "labels": np.column_stack([t[c] for c in _LABELS]).astype(np.float32),
            "label_errors": np.column_stack([t[f"{c}_ERR"] for c in _LABELS]
                                            ).astype(np.float32)}


_ROW_KEYS = ("file_idx", "row", "specid", "star", "z", "snr", "flags", "labels", "label_errors")


def shard_tasks(cfg: dict[str, Any], m: dict[str, Any], per_shard: int, shard_dir: Path
                ) -> list[ShardTask]:
    """Contiguous shards of ``per_shard`` manifest rows, weighted by spectra to process + 1,
    each fingerprinted by the settings, the code version and its rows' manifest values."""
    n = m["specid"].size
    fatal = flags.is_fatal(m["flags"])
    settings = fingerprint(declared(cfg, CONFIG_SECTIONS), __version__, str(m["survey"]))
    tasks = []
    for k, a in enumerate(range(0, n, per_shard)):
        b = min(n, a + per_shard)
        names = [str(f) for f in m["files"][np.unique(m["file_idx"][a:b])]]
        fp = fingerprint(settings, names, *(m[key][a:b] for key in _ROW_KEYS))
        tasks.append(ShardTask(k, a, b - a, str(shard_dir / f"shard-{k:06d}.h5"), fp,
                               weight=float((~fatal[a:b]).sum()) + 1.0))
    return tasks


def process_shard(cfg: dict[str, Any], m: dict[str, Any], a: int, b: int
                  ) -> tuple[dict[str, Any], Counter]:
    """Preprocess manifest rows [a, b): the shard arrays (io.shards layout, plus 'reasons',
    a list of n strings) and the per-reason counts of spectra that failed."""
    from specbridge.io.fitsutil import FormatError
    from specbridge.io.spectra import read_spectra_groups
    from specbridge.kernels.pipeline import LAMOST_R, PreprocessSettings, preprocess_batch

    survey = str(m["survey"])
    degrade = survey == "desi" and cfg["preprocess"]["degrade_desi_to_lamost"]
    settings = PreprocessSettings.from_config(cfg, LAMOST_R if degrade else None)
    n = b - a
    npix = settings.grid.npix
    out = {"flux": np.zeros((n, npix), np.float32), "ivar": np.zeros((n, npix), np.float32),
           "mask": np.full((n, npix), flags.pixel_flag("NO_DATA"), np.uint8)}
    for key in ("specid", "star", "snr", "labels", "label_errors"):
        out[key] = m[key][a:b].copy()
    out["manifest_row"] = np.arange(a, b, dtype=np.int64)
    out["z"] = np.nan_to_num(m["z"][a:b])
    fl = m["flags"][a:b].copy()
    reasons: list[str] = [""] * n
    counts: Counter = Counter()
    todo = np.flatnonzero(~flags.is_fatal(fl))
    failed = flags.flag("PREPROCESS_FAILED")
    for item in read_spectra_groups(survey, m["files"], m["file_idx"][a:b][todo],
                                    m["row"][a:b][todo], degrade):
        grp = todo[item[0]]
        if isinstance(item[1], FormatError):
            fl[grp] |= failed
            for i in grp:
                reasons[i] = item[1].reason
            counts[f"{item[1].flag}: {item[1].reason}"[:80]] += grp.size
            continue
        _, wave, flux, ivar, mask, sigma = item
        f, iv, pm = preprocess_batch(wave, flux, ivar, mask, out["z"][grp], settings, sigma)
        out["flux"][grp] = f
        out["ivar"][grp] = iv
        out["mask"][grp] = pm
    empty = (out["ivar"] > 0).sum(axis=1) == 0
    newly = empty & ~flags.is_fatal(fl)
    fl[newly] |= failed
    for i in np.flatnonzero(newly):
        reasons[i] = "no usable pixel on the grid after preprocessing"
    if newly.any():
        counts["no usable pixel on the grid after preprocessing"] += int(newly.sum())
    out["flags"] = fl
    out["reasons"] = reasons
    return out, counts


def set_threads(comm: Any) -> int:
    """Numba threads per rank (parallel.mpi.cores_per_rank); returns the number set."""
    import numba

    n = min(cores_per_rank(ranks_on_node(comm)), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def warm_kernels(comm: Any) -> None:
    """Compile the kernels on rank 0 first (filling Numba's on-disk cache), then on the other
    ranks, so ranks never race writing the same cache files."""
    from specbridge.kernels.grid import LogGrid
    from specbridge.kernels.pipeline import PreprocessSettings, preprocess_batch

    def compile_once():
        w = np.linspace(3900, 5700, 300)
        f = np.ones((2, 300), np.float32)
        s = PreprocessSettings(LogGrid(), True, 5, 7, 2, 1800.0)
        for dt in (np.float32, np.float64):
            preprocess_batch(w, f.astype(dt), f.astype(dt), np.zeros((2, 300), np.int32),
                             np.zeros(2), s, np.full(300, 0.5))

    rank, _ = comm_rank_size(comm)
    if rank == 0:
        compile_once()
    if comm is not None:
        comm.Barrier()
        if rank != 0:
            compile_once()


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, force: bool = False, spectra_per_shard: int | None = None) -> int:
    """Preprocess ``inputs['manifest']`` into shards beside ``outputs['index']`` (HDF5 index;
    shards in ``shards/`` beside it). ``comm``: MPI communicator or None (one process)."""
    import time

    from specbridge.config import config_hash

    full_hash = config_hash(cfg)  # provenance of the whole resolved config
    cfg = declared(cfg, CONFIG_SECTIONS)
    log = rank0_logger("specbridge.preprocess", comm)
    t0 = time.monotonic()
    m = bcast_from_rank0(comm, lambda: read_manifest_rows(inputs["manifest"]))
    return run_or_abort(comm, log, _run, cfg, m, inputs, outputs, comm, log, force,
                        spectra_per_shard, t0, full_hash)


def _run(cfg, m, inputs, outputs, comm, log: logging.Logger, force, per, t0, full_hash
         ) -> int:
    import time

    rank, size = comm_rank_size(comm)
    nthreads = set_threads(comm)
    warm_kernels(comm)
    out_index = Path(outputs["index"])
    tasks = shard_tasks(cfg, m, per or cfg["preprocess"]["spectra_per_shard"],
                        out_index.parent / "shards")
    n = m["specid"].size
    log.info("%d spectra (%s) in %d shards over %d ranks x %d threads", n, m["survey"],
             len(tasks), size, nthreads)
    grid = cfg["grid"]

    def compute(task: ShardTask) -> ShardResult:
        arrays, counts = process_shard(cfg, m, task.first_row, task.first_row + task.n)
        failed = sorted({r for r in arrays.pop("reasons") if r})
        return ShardResult(arrays, {
            "survey": str(m["survey"]), "grid_start": grid["log10_lambda_start"],
            "grid_step": grid["log10_lambda_step"], "npix": grid["npix"],
            "failure_reasons": json.dumps(failed), "manifest": str(inputs["manifest"])}, counts)

    from specbridge.io.shards import write_shard

    job = ShardJob("preprocess", tasks, compute, out_index, {
        "n_spectra": n, "survey": str(m["survey"]), "manifest": str(inputs["manifest"]),
        "config_hash": full_hash, "n_fatal_in_manifest": int(flags.is_fatal(
            m["flags"]).sum())}, write=lambda p, a, at, _n: write_shard(p, a, at), force=force)
    s = run_shards(job, comm, log)
    if s is not None:
        dt = time.monotonic() - t0
        log.info("wrote %s: %d shards (%d skipped as complete), %d spectra processed in %.1f s "
                 "(%.0f spectra/s overall, %.0f spectra/s per rank in the kernels+I/O loop)",
                 out_index, s.n_shards, s.skipped, s.n_computed, dt, s.n_computed / max(dt, 1e-9),
                 s.n_computed / size / s.compute_s)
        log.info("peak memory per rank: %s MB", ", ".join(f"{p:.0f}" for p in s.peak_mb))
        for reason, c in s.failures.items():
            log.info("  failed: %-60s %d", reason, c)
    return 0
