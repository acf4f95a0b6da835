"""``specbridge mock``: arguments of :mod:`specbridge.stages.mock`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import mock

    comm, cfg = mpi_stage_config(args)
    outputs = {"lamost_list": args.lamost_list, "desi_list": args.desi_list,
               "redrock_list": args.redrock_list, "labels": args.labels}
    return mock.run(cfg, {}, outputs, comm, n_lamost=args.n_lamost, n_desi=args.n_desi,
                    with_resolution=False if args.no_resolution else None)


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
