"""``specbridge vac``: arguments of :mod:`specbridge.stages.vac`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import vac

    comm, cfg = mpi_stage_config(args)
    return vac.run(cfg, {"predictions": args.predictions, "manifest": args.manifest},
                   {"fits": args.fits, "hdf5": args.hdf5, "tree": args.tree}, comm)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vac", help="write the value-added catalogue (FITS + HDF5; MPI)",
                       description="One row per input DESI spectrum (flagged ones included), "
                                   "keyed by TARGETID, SURVEY and PROGRAM, one PRIMARY row per "
                                   "star: PARAMS, CANDIDATES, FIBERMAP. The catalogue of every "
                                   "observation (FITS + HDF5) and, with --tree, DESI's layout: "
                                   "per-HEALPix files and merged catalogues per SURVEY-PROGRAM. "
                                   "Under mpiexec/srun the per-HEALPix files are spread over "
                                   "the ranks.")
    add_config_argument(p)
    p.add_argument("--predictions", required=True, help="prediction index HDF5 of infer")
    p.add_argument("--manifest", required=True, help="DESI manifest FITS")
    p.add_argument("--fits", required=True, help="catalogue of every observation (FITS)")
    p.add_argument("--hdf5", required=True, help="its HDF5 twin")
    p.add_argument("--tree", help="directory for the DESI layout (healpix/SURVEY/PROGRAM/"
                                  "HPIXGROUP/HEALPIX/ files and per-SURVEY-PROGRAM catalogues)")
    p.set_defaults(func=run)
