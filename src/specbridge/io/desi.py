"""DESI coadd-* and spectra-* files (healpix- or tile-grouped) and redrock redshift files.

Layout (docs/design.md): FIBERMAP (TARGETID, TARGET_RA/DEC, OBJTYPE, ...), EXP_FIBERMAP,
SCORES, then per arm B/R/Z the HDUs ``{ARM}_WAVELENGTH`` (vacuum Angstrom, shape (npix,)),
``{ARM}_FLUX`` and ``{ARM}_IVAR`` (shape (nspec, npix), 1e-17 erg/s/cm2/A and its inverse
variance), ``{ARM}_MASK`` (int, possibly a tile-compressed image) and ``{ARM}_RESOLUTION``
(shape (nspec, ndiag, npix)). Only the rows, arms and HDUs asked for are read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fitsio
import numpy as np

from specbridge.io.fitsutil import FormatError, extnames, guarded_read, opened, require_hdus

ARMS = ("B", "R", "Z")
#: survey phases whose FIBERMAP target columns carry a prefix (SV1_DESI_TARGET, ...)
TARGET_PHASES = ("", "SV1_", "SV2_", "SV3_")
FIBERMAP_COLUMNS = ("TARGETID", "TARGET_RA", "TARGET_DEC", "OBJTYPE", "COADD_FIBERSTATUS",
                    "FIBERSTATUS", "REF_ID", "REF_CAT",
                    *(f"{p}{c}" for c in ("DESI_TARGET", "MWS_TARGET") for p in TARGET_PHASES))
REDSHIFT_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE")


@dataclass
class DesiArm:
    """One arm of a DESI file for a set of rows.

    wave: (npix,) float64 vacuum Angstrom; flux, ivar: (nrow, npix) float32;
    mask: (nrow, npix) int32 or None; resolution: (nrow, ndiag, npix) float32 or None.
    """

    arm: str
    wave: np.ndarray
    flux: np.ndarray | None
    ivar: np.ndarray | None
    mask: np.ndarray | None
    resolution: np.ndarray | None


def _row_span(rows: Sequence[int] | None, nrows: int) -> tuple[int, int, np.ndarray | None]:
    """Smallest contiguous [start, stop) holding ``rows``, and the indices within it."""
    if rows is None:
        return 0, nrows, None
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return 0, 0, rows
    if rows.min() < 0 or rows.max() >= nrows:
        raise IndexError(f"rows outside 0..{nrows - 1}")
    start, stop = int(rows.min()), int(rows.max()) + 1
    return start, stop, rows - start


Source = str | Path | fitsio.FITS


def desi_nrows(path: Source) -> int:
    """Number of spectra in a DESI file (rows of FIBERMAP, else of B_FLUX).

    Every reader here takes a path or an open ``fitsio.FITS`` (see fitsutil.opened)."""
    with opened(path) as (fits, path):
        names = extnames(fits)
        if "FIBERMAP" in names:
            return int(fits["FIBERMAP"].get_nrows())
        for arm in ARMS:
            if f"{arm}_FLUX" in names:
                return int(fits[f"{arm}_FLUX"].get_info()["dims"][0])
    raise FormatError(path, "neither FIBERMAP nor any *_FLUX HDU", flag="MISSING_HDU")


def desi_arms(path: Source) -> list[str]:
    """The arms (of B, R, Z) whose WAVELENGTH and FLUX HDUs are present."""
    with opened(path) as (fits, path):
        names = extnames(fits)
    return [a for a in ARMS if f"{a}_WAVELENGTH" in names and f"{a}_FLUX" in names]


def read_fibermap(path: Source, rows: Sequence[int] | None = None,
                  columns: Sequence[str] = FIBERMAP_COLUMNS) -> np.ndarray | None:
    """FIBERMAP columns (those of ``columns`` that exist) for ``rows``; None if no FIBERMAP."""
    with opened(path) as (fits, path):
        if "FIBERMAP" not in extnames(fits):
            return None
        hdu = fits["FIBERMAP"]
        present = [c for c in columns if c in hdu.get_colnames()]
        if "TARGETID" not in present:
            raise FormatError(path, "FIBERMAP has no TARGETID column", flag="MISSING_HDU")
        kw = {} if rows is None else {"rows": np.asarray(rows, dtype=np.int64)}
        return guarded_read(path, "FIBERMAP", hdu.read, columns=present, **kw)


def target_bits(fibermap: np.ndarray, column: str) -> np.ndarray:
    """(nrow,) int64: the FIBERMAP's ``column`` (DESI_TARGET, MWS_TARGET...) of the main
    survey OR-ed with its SV1/SV2/SV3 variants, those present; 0 where none is. A file holds
    one phase's bits (an SV3 coadd: SV3_DESI_TARGET, with DESI_TARGET 0 or the main bits of the
    same target); bits 60-62 of DESI_TARGET (BGS_ANY, MWS_ANY, SCND_ANY) mean the same in
    every phase, other bits are the phase's own."""
    out = np.zeros(len(fibermap), dtype=np.int64)
    for p in TARGET_PHASES:
        if f"{p}{column}" in fibermap.dtype.names:
            out |= fibermap[f"{p}{column}"].astype(np.int64)
    return out


def read_arm(path: Source, arm: str, rows: Sequence[int] | None = None,
             parts: Sequence[str] = ("FLUX", "IVAR", "MASK")) -> DesiArm:
    """Read one arm's wavelength and the requested ``parts`` (FLUX, IVAR, MASK, RESOLUTION).

    Only the contiguous span of ``rows`` is read from disk. MASK and RESOLUTION are optional in
    the file (None when absent); FLUX and IVAR are required when asked for.
    """
    arm = arm.upper()
    with opened(path) as (fits, path):
        names = extnames(fits)
        require_hdus(fits, path, [f"{arm}_WAVELENGTH"]
                     + [f"{arm}_{p}" for p in parts if p in ("FLUX", "IVAR")])
        wave = guarded_read(path, f"{arm}_WAVELENGTH", fits[f"{arm}_WAVELENGTH"].read)
        wave = np.asarray(wave, dtype=np.float64).ravel()
        out: dict[str, np.ndarray | None] = {}
        for part in ("FLUX", "IVAR", "MASK", "RESOLUTION"):
            ext = f"{arm}_{part}"
            if part not in parts or ext not in names:
                out[part] = None
                continue
            hdu = fits[ext]
            dims = hdu.get_info()["dims"]
            start, stop, sel = _row_span(rows, int(dims[0]))
            if part == "RESOLUTION":
                data = guarded_read(path, ext, hdu.__getitem__,
                                    (slice(start, stop), slice(None), slice(None)))
            else:
                data = guarded_read(path, ext, hdu.__getitem__, (slice(start, stop), slice(None)))
            if sel is not None:
                data = data[sel]
            if part in ("FLUX", "IVAR") and data.shape[-1] != wave.size:
                raise FormatError(path, f"{ext} has {data.shape[-1]} pixels but "
                                        f"{arm}_WAVELENGTH has {wave.size}", flag="BAD_SHAPE")
            dtype = np.int32 if part == "MASK" else np.float32
            out[part] = np.ascontiguousarray(data, dtype=dtype)
    return DesiArm(arm, wave, out["FLUX"], out["IVAR"], out["MASK"], out["RESOLUTION"])


def read_redshifts(path: Source) -> np.ndarray:
    """TARGETID, Z, ZERR, ZWARN, SPECTYPE from a redrock file's REDSHIFTS (or ZBEST) HDU."""
    with opened(path) as (fits, path):
        names = extnames(fits)
        ext = "REDSHIFTS" if "REDSHIFTS" in names else "ZBEST" if "ZBEST" in names else None
        if ext is None:
            raise FormatError(path, "no REDSHIFTS or ZBEST HDU", flag="MISSING_HDU")
        hdu = fits[ext]
        missing = [c for c in REDSHIFT_COLUMNS if c not in hdu.get_colnames()]
        if missing:
            raise FormatError(path, f"{ext} lacks column(s) {', '.join(missing)}",
                              flag="MISSING_HDU")
        return guarded_read(path, ext, hdu.read, columns=list(REDSHIFT_COLUMNS))


def redshift_lookup(paths: Sequence[str | Path]) -> dict[int, tuple[float, float, int, str]]:
    """TARGETID -> (Z, ZERR, ZWARN, SPECTYPE) over several redrock files (later files win)."""
    table: dict[int, tuple[float, float, int, str]] = {}
    for p in paths:
        z = read_redshifts(p)
        for row in z:
            spectype = row["SPECTYPE"]
            if isinstance(spectype, bytes):
                spectype = spectype.decode()
            table[int(row["TARGETID"])] = (float(row["Z"]), float(row["ZERR"]),
                                           int(row["ZWARN"]), str(spectype).strip())
    return table


def file_layout(path: str | Path) -> str:
    """``desi-coadd`` or ``desi-spectra`` from the file name (both read identically)."""
    return "desi-spectra" if Path(path).name.startswith("spectra") else "desi-coadd"


#: DESI file names that carry the survey and program, as desispec writes them for
#: HEALPix-grouped files: ``coadd-main-bright-12345.fits``, ``spectra-sv3-dark-9876.fits``,
#: ``redrock-...``, ``zbest-...`` (optionally gzipped). SURVEY and PROGRAM start with a letter,
#: so tile-grouped names (``coadd-PETAL-TILEID-NIGHT``, ``coadd-PETAL-TILEID-thruNIGHT``) do
#: not match.
_GROUPED_NAME = re.compile(r"^(?:coadd|spectra|redrock|zbest|rrdetails|tilecoadd)-"
                           r"(?P<survey>[a-z][a-z0-9]*)-(?P<program>[a-z][a-z0-9]*)-(?P<pix>\d+)"
                           r"\.fits(?:\.gz)?$")
#: the width of the SURVEY and PROGRAM columns downstream (DESI's are 'main', 'special', ...,
#: 'bright', 'backup', 'other')
SURVEY_PROGRAM_LEN = 8


def survey_program_from_name(path: str | Path) -> tuple[str, str]:
    """(survey, program) from a HEALPix-grouped DESI file name, lower case; ('', '') if the
    name does not carry them (tile-grouped files, renamed copies)."""
    m = _GROUPED_NAME.match(Path(path).name.lower())
    return (m["survey"], m["program"]) if m else ("", "")


def survey_program(path: str | Path, header: Any = None) -> tuple[str, str]:
    """(survey, program) of a DESI file as DESI records them: the primary header's SURVEY and
    PROGRAM keywords where present (tile-grouped coadds carry them too), else the file name
    (:func:`survey_program_from_name`); each lower case, at most
    :data:`SURVEY_PROGRAM_LEN` characters, '' when unknown."""
    name = survey_program_from_name(path)
    out = []
    for k, key in enumerate(("SURVEY", "PROGRAM")):
        value = header.get(key) if header is not None and key in header else None
        text = str(value).strip().lower() if value is not None else ""
        out.append((text or name[k])[:SURVEY_PROGRAM_LEN])
    return out[0], out[1]


def read_survey_program(path: Source) -> tuple[str, str]:
    """:func:`survey_program` of a file, reading its primary header (the name alone if the
    header cannot be read)."""
    with opened(path) as (fits, p):
        try:
            header = fits[0].read_header()
        except (OSError, ValueError):
            header = None
    return survey_program(p, header)
