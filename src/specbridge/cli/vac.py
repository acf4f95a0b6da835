"""``specbridge vac``: arguments of :mod:`specbridge.stages.vac`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import vac

    return vac.run(config_from_args(args), {"predictions": args.predictions,
                                            "manifest": args.manifest},
                   {"fits": args.fits, "hdf5": args.hdf5, "healpix_dir": args.healpix_dir})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vac", help="write the value-added catalogue (FITS + HDF5)",
                       description="One row per input DESI spectrum (flagged ones included), "
                                   "keyed by TARGETID: PARAMS, CANDIDATES, FIBERMAP; a merged "
                                   "FITS file, one per HEALPix pixel, and an HDF5 twin.")
    add_config_argument(p)
    p.add_argument("--predictions", required=True, help="prediction index HDF5 of infer")
    p.add_argument("--manifest", required=True, help="DESI manifest FITS")
    p.add_argument("--fits", required=True, help="merged VAC FITS file to write")
    p.add_argument("--hdf5", required=True, help="HDF5 twin to write")
    p.add_argument("--healpix-dir", help="directory for the per-HEALPix FITS files")
    p.set_defaults(func=run)
