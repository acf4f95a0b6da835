"""``specbridge vac``: the value-added catalogue from the prediction shards and the DESI
manifest - a merged FITS file, one FITS file per HEALPix pixel, and the HDF5 twin."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from specbridge.cli._common import CLIError, add_config_argument, config_from_args

log = logging.getLogger("specbridge.vac")


def run(args: argparse.Namespace) -> int:
    from specbridge.config import config_hash
    from specbridge.vac.catalogue import (
        build_catalogue,
        provenance,
        write_fits,
        write_hdf5,
        write_healpix_files,
    )

    cfg = config_from_args(args)
    name = cfg["vac"]["name"]
    t0 = time.monotonic()
    try:
        cat = build_catalogue(args.predictions, args.manifest)
    except (OSError, KeyError, ValueError) as exc:
        raise CLIError(f"cannot build the catalogue: {exc}") from None
    n = cat["PARAMS"].size
    cards = provenance(cat, name, config_hash(cfg))
    t1 = time.monotonic()
    write_fits(args.fits, cat, cards)
    write_hdf5(args.hdf5, cat, cards)
    t2 = time.monotonic()
    nfiles = 0
    if args.healpix_dir:
        final = Path(args.healpix_dir)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        nfiles = len(write_healpix_files(tmp, cat, cards, name))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    t3 = time.monotonic()
    flagged = int((cat["PARAMS"]["FLAGS"] != 0).sum())
    log.info("%d rows (one per input spectrum; %d with flags, %d absent from the predictions)"
             " built in %.1f s; merged FITS + HDF5 in %.1f s (%.0f rows/s); %d HEALPix files in "
             "%.1f s", n, flagged, cat["n_missing"], t1 - t0, t2 - t1, n / max(t2 - t1, 1e-9),
             nfiles, t3 - t2)
    log.info("wrote %s, %s%s", args.fits, args.hdf5,
             f", {args.healpix_dir}/" if args.healpix_dir else "")
    return 0


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
