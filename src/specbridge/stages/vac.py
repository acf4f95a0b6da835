"""The value-added catalogue from the prediction shards and the DESI manifest, in DESI's
conventions: the catalogue of every observation (FITS + HDF5, manifest order, one PRIMARY row
per star) and, under a versioned directory, per-HEALPix files in
``healpix/SURVEY/PROGRAM/HPIXGROUP/HEALPIX/`` and merged catalogues per SURVEY-PROGRAM; all
built in bounded memory (specbridge.vac.stream). Under MPI the per-HEALPix files, the costly
part at survey scale, are spread over the ranks; rank 0 writes everything else."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from specbridge.errors import UserError, describe
from specbridge.parallel.mpi import comm_rank_size, rank0_logger, run_or_abort
from specbridge.stages import declared

CONFIG_SECTIONS = ("vac",)


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None) -> int:
    """Build the catalogue of ``inputs['predictions']`` (index HDF5) and ``inputs['manifest']``
    and write ``outputs['fits']``, ``outputs['hdf5']`` and, if given, the DESI layout under
    ``outputs['tree']`` (replaced as a whole, atomically by a rename). Every rank of ``comm``
    calls this; a failure on one ends every rank."""
    log = rank0_logger("specbridge.vac", comm)
    return run_or_abort(comm, log, _run, cfg, inputs, outputs, comm, log)


def _run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any], comm: Any,
         log: Any) -> int:
    from specbridge.config import config_hash
    from specbridge.vac import stream

    rank, size = comm_rank_size(comm)
    full_hash = config_hash(cfg)  # provenance of the whole resolved config
    cfg = declared(cfg, CONFIG_SECTIONS)
    vc = cfg["vac"]
    final = Path(outputs["tree"]) if outputs.get("tree") else None
    tmp = final.with_name(final.name + ".tmp") if final is not None else None
    if tmp is not None and rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    t0 = time.monotonic()
    last = [t0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 10 or done == total:
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            log.info("%s: %d/%d (%.0f rows/s, ETA %.0f s)", what, done, total, rate,
                     (total - done) / max(rate, 1e-9))

    try:
        s = stream.build(inputs["predictions"], inputs["manifest"], outputs["fits"],
                         outputs["hdf5"], tmp, vc["name"], vc["version"], full_hash,
                         chunk_rows=vc["chunk_rows"], block_rows=vc["block_rows"],
                         progress=progress, comm=comm)
    except (OSError, KeyError, ValueError, UserError) as exc:
        if tmp is not None and rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot build the catalogue: {describe(exc)}") from None
    if s is None:  # ranks other than 0: their HEALPix files are written
        return 0
    if final is not None and tmp is not None:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    sec = s.seconds
    log.info("%d rows (one per input spectrum; %d absent from the predictions; %d PRIMARY); "
             "keys %.1f s, catalogue of every observation %.1f s (%.0f rows/s); "
             "%d HEALPix files (%d rank(s)) and %d SURVEY-PROGRAM catalogues in %.1f s", s.n,
             s.n_missing, s.n_primary, sec["keys"], sec["catalogue"],
             s.n / max(sec["catalogue"], 1e-9), s.n_healpix_files, size, len(s.merged),
             sec["layout"])
    log.info("wrote %s, %s%s", outputs["fits"], outputs["hdf5"],
             f", {final}/" if final is not None else "")
    return 0
