"""The labelled mock survey (MPI over files): LAMOST and DESI files, redrock files and an
APOGEE allStar-like label catalogue, with the lists of files written."""

from __future__ import annotations

import copy
import logging
import resource
import time
from pathlib import Path
from typing import Any

from specbridge.atomic import atomic_output
from specbridge.progress import Progress
from specbridge.stages import declared

CONFIG_SECTIONS = ("data", "seed", "resources_dir", "reference_data")
log = logging.getLogger("specbridge.mock")


def _write_list(path: str | Path, paths: list[str]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        fh.write("".join(f"{p}\n" for p in paths))


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, n_lamost: int | None = None, n_desi: int | None = None,
        with_resolution: bool | None = None) -> int:
    """Generate the mock of ``cfg['data']['mock']`` beside ``outputs['lamost_list']``; write
    the file lists ``outputs['lamost_list']``, ``['desi_list']``, ``['redrock_list']``
    (optional) and the label catalogue ``outputs['labels']``. ``n_lamost``/``n_desi``
    override the config's counts; ``with_resolution=False`` leaves out the RESOLUTION HDUs."""
    from specbridge.mock.survey import generate

    cfg = copy.deepcopy(declared(cfg, CONFIG_SECTIONS))
    if n_lamost is not None:
        cfg["data"]["mock"]["n_lamost"] = n_lamost
    if n_desi is not None:
        cfg["data"]["mock"]["n_desi"] = n_desi
    outdir = Path(outputs["lamost_list"]).parent
    t0 = time.monotonic()
    from specbridge.parallel.mpi import run_or_abort

    # a failure on one rank ends every rank at once (they would wait in generate's gather)
    res = run_or_abort(comm, log, generate, cfg, outdir, comm,
                       Progress("mock", log, unit="batches"), with_resolution)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peaks = comm.gather(peak_mb, root=0) if comm is not None else [peak_mb]
    if comm is not None and comm.rank != 0:
        return 0
    log.info("peak memory per rank: %s MB", ", ".join(f"{p:.0f}" for p in peaks))
    _write_list(outputs["lamost_list"], res["lamost"])
    _write_list(outputs["desi_list"], res["desi"])
    if outputs.get("redrock_list"):
        _write_list(outputs["redrock_list"], res["redrock"])
    labels = outputs.get("labels")
    if labels and Path(labels).resolve() != Path(res["labels"]).resolve():
        Path(res["labels"]).replace(labels)
    dt = time.monotonic() - t0
    m = cfg["data"]["mock"]
    n = m["n_lamost"] + m.get("n_lamost_unlabelled", 0) + m["n_desi"]
    log.info("mock survey: %d LAMOST files, %d DESI files (%d spectra) in %.1f s: %.0f "
             "spectra/s", len(res["lamost"]), len(res["desi"]), m["n_desi"], dt, n / dt)
    return 0
