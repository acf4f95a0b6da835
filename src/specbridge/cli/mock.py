"""``specbridge mock``: generate the labelled mock survey (MPI-parallel over files)."""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

from specbridge.atomic import atomic_output
from specbridge.cli._common import add_config_argument, config_from_args
from specbridge.parallel.mpi import get_comm
from specbridge.progress import Progress

log = logging.getLogger("specbridge.mock")


def _write_list(path: str, paths: list[str]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        fh.write("".join(f"{p}\n" for p in paths))


def run(args: argparse.Namespace, comm=None) -> int:
    from specbridge.mock.survey import generate

    cfg = config_from_args(args)
    if args.n_lamost is not None:
        cfg["data"]["mock"]["n_lamost"] = args.n_lamost
    if args.n_desi is not None:
        cfg["data"]["mock"]["n_desi"] = args.n_desi
    comm = comm if comm is not None else get_comm()
    outdir = Path(args.lamost_list).parent
    t0 = time.monotonic()
    res = generate(cfg, outdir, comm=comm, progress=Progress("mock", log, unit="batches"),
                   with_resolution=False if args.no_resolution else None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peaks = comm.gather(peak_mb, root=0) if comm is not None else [peak_mb]
    if comm is not None and comm.rank != 0:
        return 0
    log.info("peak memory per rank: %s MB", ", ".join(f"{p:.0f}" for p in peaks))
    _write_list(args.lamost_list, res["lamost"])
    _write_list(args.desi_list, res["desi"])
    if args.redrock_list:
        _write_list(args.redrock_list, res["redrock"])
    if args.labels and Path(args.labels).resolve() != Path(res["labels"]).resolve():
        Path(res["labels"]).replace(args.labels)
    dt = time.monotonic() - t0
    m = cfg["data"]["mock"]
    n = m["n_lamost"] + m["n_desi"]
    log.info("mock survey: %d LAMOST files, %d DESI files (%d spectra) in %.1f s: %.0f "
             "spectra/s", len(res["lamost"]), len(res["desi"]), m["n_desi"], dt, n / dt)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mock", help="generate the labelled mock survey from the MILES library",
                       description="Generate LAMOST-format (both layouts) and DESI-format "
                                   "(coadd + redrock) mock spectra with known labels, an "
                                   "APOGEE allStar-like label catalogue and a truth table. "
                                   "Runs under mpiexec/srun with ranks sharing the files.")
    add_config_argument(p)
    p.add_argument("--lamost-list", required=True,
                   help="output: list of LAMOST files written (the survey goes beside it)")
    p.add_argument("--desi-list", required=True, help="output: list of DESI coadd files")
    p.add_argument("--redrock-list", help="output: list of DESI redrock files")
    p.add_argument("--labels", required=True, help="output: APOGEE allStar-like label FITS")
    p.add_argument("--n-lamost", type=int, help="override data.mock.n_lamost")
    p.add_argument("--n-desi", type=int, help="override data.mock.n_desi")
    p.add_argument("--no-resolution", action="store_true",
                   help="leave out the DESI RESOLUTION HDUs (saves disk at scale)")
    p.set_defaults(func=run)
