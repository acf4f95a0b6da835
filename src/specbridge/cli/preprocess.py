"""``specbridge preprocess``: the manifest's spectra onto the common grid, as HDF5 shards.

One MPI job (``mpiexec``/``srun``) in the desispec manner: rank 0 reads the manifest and
broadcasts the few columns needed; shards (contiguous blocks of manifest rows) are spread over
the ranks weighted by the number of spectra to process; each rank writes its shards
atomically, skipping those already complete with the same inputs and settings; failures are
flagged per spectrum and counted per reason, gathered on rank 0, which writes the index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fitsio
import numpy as np

from specbridge import __version__, flags
from specbridge.cli._common import CLIError, add_config_argument, config_from_args
from specbridge.config import ConfigError, config_hash
from specbridge.faults import kill_point
from specbridge.io.fitsutil import FormatError, fits_text
from specbridge.io.shards import shard_is_complete, write_index, write_shard
from specbridge.parallel.mpi import (
    bcast_from_rank0,
    comm_rank_size,
    cores_per_rank,
    gather_error_counts,
    get_comm,
    rank0_logger,
    ranks_on_node,
    run_or_abort,
)
from specbridge.parallel.partition import weighted_partition
from specbridge.progress import Progress

MANIFEST_COLUMNS = ("SURVEY", "FILE", "ROW", "SPECID", "Z", "SNR", "FLAGS", "TEFF", "TEFF_ERR",
                    "LOGG", "LOGG_ERR", "FEH", "FEH_ERR", "ALPHA_FE", "ALPHA_FE_ERR")
LAMOST_R = 1800.0


def load_manifest_rows(path: str, chunk: int = 100_000) -> dict[str, np.ndarray]:
    """The manifest columns preprocessing needs, with FILE factorised into a file table
    (``files``: (nfiles,) str) and ``file_idx`` (n,) int32. The 256-byte FILE column is read
    in chunks of ``chunk`` rows, so memory stays ~60 bytes per row at 10^6 rows."""
    numeric = [c for c in MANIFEST_COLUMNS if c not in ("SURVEY", "FILE")]
    try:
        with fitsio.FITS(path) as fits:
            hdu = fits["MANIFEST"]
            n = hdu.get_nrows()
            t = hdu.read(columns=numeric)
            survey = hdu.read_column("SURVEY", rows=[0]) if n else np.array([b""])
            lookup: dict[str, int] = {}
            file_idx = np.empty(n, dtype=np.int32)
            for a in range(0, n, chunk):
                col = hdu.read_column("FILE", rows=np.arange(a, min(n, a + chunk)))
                uniq, inv = np.unique(col, return_inverse=True)
                ids = np.array([lookup.setdefault(fits_text(u), len(lookup)) for u in uniq],
                               dtype=np.int32)
                file_idx[a:a + col.size] = ids[inv]
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read manifest {path}: {exc}") from None
    files = np.array(list(lookup), dtype=object)
    labels = np.column_stack([t[c] for c in ("TEFF", "LOGG", "FEH", "ALPHA_FE")])
    errors = np.column_stack([t[f"{c}_ERR"] for c in ("TEFF", "LOGG", "FEH", "ALPHA_FE")])
    s0 = fits_text(survey[0])
    return {"files": files, "file_idx": file_idx,
            "row": t["ROW"].astype(np.int32), "specid": t["SPECID"].astype(np.int64),
            "z": t["Z"].astype(np.float64), "snr": t["SNR"].astype(np.float32),
            "flags": t["FLAGS"].astype(np.int64), "labels": labels.astype(np.float32),
            "label_errors": errors.astype(np.float32), "survey": np.array(s0)}


def shard_plan(n: int, per_shard: int, fatal: np.ndarray) -> tuple[list[tuple[int, int]],
                                                                   list[float]]:
    """Contiguous [start, stop) shards and their weights (spectra to process + 1)."""
    bounds = [(s, min(n, s + per_shard)) for s in range(0, n, per_shard)]
    weights = [float((~fatal[a:b]).sum()) + 1.0 for a, b in bounds]
    return bounds, weights


def settings_digest(cfg: dict[str, Any], m: dict[str, np.ndarray], a: int, b: int) -> str:
    """Hash of everything a shard depends on: grid and preprocessing settings, and its rows'
    inputs (file, row, ID, redshift, flags)."""
    h = hashlib.sha256()
    h.update(config_hash({"grid": cfg["grid"], "preprocess": cfg["preprocess"]}).encode())
    h.update(__version__.encode())
    for key in ("file_idx", "row", "specid", "z", "flags"):
        h.update(np.ascontiguousarray(m[key][a:b]).tobytes())
    h.update("\n".join(str(f) for f in m["files"][np.unique(m["file_idx"][a:b])]).encode())
    return h.hexdigest()[:24]


def _read_inputs(survey: str, files: np.ndarray, file_idx: np.ndarray, rows: np.ndarray,
                 want_resolution: bool):
    """Yield (local indices, wave, flux, ivar, mask, sigma_in or None) per input group, or
    (local indices, FormatError) for a file that fails."""
    from specbridge.io import desi, lamost

    order = np.argsort(file_idx, kind="stable")
    bounds = np.flatnonzero(np.diff(file_idx[order])) + 1
    lam_groups: dict[tuple[int, float], list] = {}
    for grp in np.split(order, bounds):
        if grp.size == 0:
            continue
        path = files[file_idx[grp[0]]]
        try:
            if survey == "desi":
                parts = ("FLUX", "IVAR", "MASK") + (("RESOLUTION",) if want_resolution else ())
                arm = desi.read_arm(path, "B", rows=rows[grp], parts=parts)
                sigma = None
                if want_resolution:
                    from specbridge.kernels.pipeline import (
                        nominal_desi_sigma_aa,
                        resolution_sigma_aa,
                    )
                    sigma = (resolution_sigma_aa(arm.resolution, arm.wave)
                             if arm.resolution is not None else nominal_desi_sigma_aa(arm.wave))
                yield grp, arm.wave, arm.flux, arm.ivar, arm.mask, sigma
            else:
                for i in grp:
                    s = lamost.read_lamost(path)
                    key = (s.wave.size, round(float(s.wave[0]), 3))
                    lam_groups.setdefault(key, []).append((i, s))
        except FormatError as err:
            yield grp, err
    for items in lam_groups.values():
        idx = np.array([i for i, _ in items])
        wave = items[0][1].wave
        yield (idx, wave, np.stack([s.flux for _, s in items]),
               np.stack([s.ivar for _, s in items]),
               np.stack([s.andmask for _, s in items]), None)


def process_shard(cfg: dict[str, Any], m: dict[str, np.ndarray], a: int, b: int,
                  ) -> tuple[dict[str, np.ndarray], Counter]:
    """Preprocess manifest rows [a, b); returns the shard arrays and failure counts."""
    from specbridge.kernels.pipeline import PreprocessSettings, preprocess_batch

    survey = str(m["survey"])
    degrade = survey == "desi" and cfg["preprocess"]["degrade_desi_to_lamost"]
    settings = PreprocessSettings.from_config(cfg, LAMOST_R if degrade else None)
    n = b - a
    npix = settings.grid.npix
    out = {"flux": np.zeros((n, npix), np.float32), "ivar": np.zeros((n, npix), np.float32),
           "mask": np.full((n, npix), flags.pixel_flag("NO_DATA"), np.uint8)}
    for key in ("specid", "snr", "labels", "label_errors"):
        out[key] = m[key][a:b].copy()
    out["manifest_row"] = np.arange(a, b, dtype=np.int64)
    out["z"] = np.nan_to_num(m["z"][a:b])
    fl = m["flags"][a:b].copy()
    reasons: list[str] = [""] * n
    counts: Counter = Counter()
    todo = np.flatnonzero(~flags.is_fatal(fl))
    failed = flags.flag("PREPROCESS_FAILED")
    for item in _read_inputs(survey, m["files"], m["file_idx"][a:b][todo], m["row"][a:b][todo],
                             degrade):
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


def _set_threads(comm) -> int:
    """Numba threads per rank (parallel.mpi.cores_per_rank)."""
    import numba

    n = min(cores_per_rank(ranks_on_node(comm)), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def warm_kernels(comm) -> None:
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


def main(args: argparse.Namespace | list[str] | None = None, comm: Any = None) -> int:
    """Entry point (``specbridge preprocess``); ``comm`` defaults to MPI.COMM_WORLD under an
    MPI launcher, else no MPI."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="specbridge preprocess")
        _add_arguments(parser)
        args = parser.parse_args(args)
    comm = comm if comm is not None else get_comm()
    log = rank0_logger("specbridge.preprocess", comm)
    t0 = time.monotonic()
    # rank 0 reads and broadcasts (a failure there too, as one message for every rank)
    payload, err = bcast_from_rank0(
        comm, lambda: (config_from_args(args), load_manifest_rows(args.manifest)),
        (CLIError, ConfigError))
    if err is not None:
        raise CLIError(err)
    cfg, m = payload
    return run_or_abort(comm, log, _run, args, comm, cfg, m, log, t0)


def _run(args, comm, cfg, m, log, t0) -> int:
    rank, size = comm_rank_size(comm)
    nthreads = _set_threads(comm)
    warm_kernels(comm)
    out_index = Path(args.output)
    shard_dir = out_index.parent / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n = m["specid"].size
    per = args.spectra_per_shard or cfg["preprocess"]["spectra_per_shard"]
    bounds, weights = shard_plan(n, per, flags.is_fatal(m["flags"]))
    mine = weighted_partition(weights, size)[rank]
    log.info("%d spectra (%s) in %d shards over %d ranks x %d threads", n, m["survey"],
             len(bounds), size, nthreads)
    progress = Progress("preprocess (rank 0)", log, unit="shards")
    counts: Counter = Counter()
    written, skipped, nspec = [], 0, 0
    t_proc = 0.0
    for k, s in enumerate(mine):
        a, b = bounds[s]
        path = shard_dir / f"shard-{s:06d}.h5"
        digest = settings_digest(cfg, m, a, b)
        if not args.force and shard_is_complete(path, b - a, digest):
            skipped += 1
        else:
            t1 = time.monotonic()
            arrays, c = process_shard(cfg, m, a, b)
            counts.update(c)
            reasons = arrays.pop("reasons")
            failed = sorted({r for r in reasons if r})
            write_shard(path, arrays, {
                "first_row": a, "settings_hash": digest, "specbridge_version": __version__,
                "survey": str(m["survey"]), "grid_start": cfg["grid"]["log10_lambda_start"],
                "grid_step": cfg["grid"]["log10_lambda_step"], "npix": cfg["grid"]["npix"],
                "failure_reasons": json.dumps(failed), "manifest": str(args.manifest)})
            t_proc += time.monotonic() - t1
            nspec += b - a
        written.append({"path": str(path), "first_row": a, "n": b - a})
        progress(k + 1, len(mine))
        kill_point("preprocess", rank, k + 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    total = gather_error_counts(comm, counts)
    stats = {"skipped": skipped, "nspec": nspec, "t_proc": t_proc, "peak_mb": peak_mb}
    everyone = comm.gather((written, stats), root=0) if comm is not None else [(written, stats)]
    if rank == 0:
        shards = [s for w, _ in everyone for s in w]
        nfatal = int(flags.is_fatal(m["flags"]).sum())
        write_index(out_index, shards, {
            "n_spectra": n, "n_shards": len(shards), "survey": str(m["survey"]),
            "manifest": str(args.manifest), "config_hash": config_hash(cfg),
            "specbridge_version": __version__, "n_fatal_in_manifest": nfatal,
            "failures": json.dumps(total)})
        dt = time.monotonic() - t0
        done = sum(st["nspec"] for _, st in everyone)
        tp = max(st["t_proc"] for _, st in everyone) or 1e-9
        log.info("wrote %s: %d shards (%d skipped as complete), %d spectra processed in %.1f s "
                 "(%.0f spectra/s overall, %.0f spectra/s per rank in the kernels+I/O loop)",
                 out_index, len(shards), sum(st["skipped"] for _, st in everyone), done, dt,
                 done / max(dt, 1e-9), done / size / tp)
        log.info("peak memory per rank: %s MB",
                 ", ".join(f"{st['peak_mb']:.0f}" for _, st in everyone))
        for reason, c in (total or {}).items():
            log.info("  failed: %-60s %d", reason, c)
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--manifest", required=True, help="manifest FITS file (one survey)")
    p.add_argument("--output", required=True,
                   help="index HDF5 file to write; shards go to shards/ beside it")
    p.add_argument("--spectra-per-shard", type=int,
                   help="override preprocess.spectra_per_shard")
    p.add_argument("--force", action="store_true", help="recompute shards even if complete")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="resample and continuum-normalise spectra (MPI)",
                       description="Shift to the rest frame, resample flux-conservingly onto "
                                   "the common grid with ivar and masks, optionally broaden "
                                   "DESI to LAMOST's resolution, normalise by a continuum; "
                                   "HDF5 shards and an index. Run under mpiexec/srun for "
                                   "several ranks; a rerun skips complete shards.")
    _add_arguments(p)
    p.set_defaults(func=lambda args: main(args))
