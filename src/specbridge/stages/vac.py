"""The value-added catalogue from the prediction shards and the DESI manifest: a merged FITS
file, one FITS file per HEALPix pixel, and the HDF5 twin."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from specbridge.errors import UserError, describe
from specbridge.stages import declared

CONFIG_SECTIONS = ("vac",)
log = logging.getLogger("specbridge.vac")


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None) -> int:
    """Build the catalogue of ``inputs['predictions']`` (index HDF5) and ``inputs['manifest']``
    and write ``outputs['fits']``, ``outputs['hdf5']`` and, if given, the per-HEALPix files
    under ``outputs['healpix_dir']`` (replaced as a whole)."""
    from specbridge.config import config_hash
    from specbridge.vac.catalogue import (
        build_catalogue,
        provenance,
        write_fits,
        write_hdf5,
        write_healpix_files,
    )

    full_hash = config_hash(cfg)  # provenance of the whole resolved config
    cfg = declared(cfg, CONFIG_SECTIONS)
    name = cfg["vac"]["name"]
    t0 = time.monotonic()
    try:
        cat = build_catalogue(inputs["predictions"], inputs["manifest"])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot build the catalogue: {describe(exc)}") from None
    n = cat["PARAMS"].size
    cards = provenance(cat, name, full_hash)
    t1 = time.monotonic()
    write_fits(outputs["fits"], cat, cards)
    write_hdf5(outputs["hdf5"], cat, cards)
    t2 = time.monotonic()
    nfiles = 0
    if outputs.get("healpix_dir"):
        final = Path(outputs["healpix_dir"])
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
    log.info("wrote %s, %s%s", outputs["fits"], outputs["hdf5"],
             f", {outputs['healpix_dir']}/" if outputs.get("healpix_dir") else "")
    return 0
