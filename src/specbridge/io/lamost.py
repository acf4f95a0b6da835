"""LAMOST low-resolution spectra, both layouts, gzipped or not.

* up to DR8 (``image``): a primary image of 5 rows (flux, inverse variance, wavelength,
  andmask, ormask); header COEFF0/COEFF1 give log10(lambda) of pixel 0 and the step.
* from DR9 (``table``): an empty primary HDU and a one-row binary table ``COADD`` with array
  columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK (and NORMALIZATION).

Wavelengths are vacuum Angstrom (header VACUUM = T). Metadata come from the primary header; the
DR1 spellings SN_U...SN_Z of the S/N keywords are accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specbridge.io.fitsutil import FormatError, extnames, guarded_read, open_fits

SNR_KEYS = {band: (f"SNR{band.upper()}", f"SN_{band.upper()}") for band in "ugriz"}


@dataclass
class LamostSpectrum:
    """One LAMOST spectrum. wave: (npix,) float64 vacuum Angstrom; flux, ivar: (npix,) float32
    (flux in the survey's relative units); andmask, ormask: (npix,) int32."""

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    andmask: np.ndarray
    ormask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _num(header, *keys: str) -> float:
    for k in keys:
        if k in header:
            try:
                v = float(header[k])
            except (TypeError, ValueError):
                return math.nan
            return v if math.isfinite(v) else math.nan
    return math.nan


def _int(header, key: str) -> int | None:
    try:
        return int(header[key])
    except (KeyError, TypeError, ValueError):
        return None


def _str(header, key: str) -> str:
    v = header.get(key, "")
    return str(v).strip() if v is not None else ""


def header_meta(header, path: str | Path) -> dict[str, Any]:
    """Survey metadata from a LAMOST primary header; missing values are NaN / None / ''."""
    meta: dict[str, Any] = {
        "OBSID": _int(header, "OBSID"),
        "RA": _num(header, "RA", "RA_OBS"),
        "DEC": _num(header, "DEC", "DEC_OBS"),
        "Z": _num(header, "Z"),
        "Z_ERR": _num(header, "Z_ERR"),
        "CLASS": _str(header, "CLASS"),
        "SUBCLASS": _str(header, "SUBCLASS"),
        "DATA_V": _str(header, "DATA_V"),
        "FILENAME": _str(header, "FILENAME") or Path(path).name,
        "COEFF0": _num(header, "COEFF0", "CRVAL1"),
        "COEFF1": _num(header, "COEFF1", "CD1_1"),
    }
    for band, keys in SNR_KEYS.items():
        meta[f"SNR{band.upper()}"] = _num(header, *keys)
    return meta


def detect_layout(fits, path: str | Path) -> str:
    """``image`` (<= DR8) or ``table`` (>= DR9) for an open LAMOST file; FormatError otherwise."""
    if "COADD" in extnames(fits):
        return "table"
    info = fits[0].get_info()
    dims = info.get("dims") or []
    if len(dims) == 2:
        if dims[0] < 3:
            raise FormatError(path, f"primary image has {dims[0]} rows; the LAMOST image layout "
                                    "needs flux, ivar, wavelength (+ masks)", flag="BAD_SHAPE")
        return "image"
    raise FormatError(path, "neither a LAMOST primary image (5 x npix) nor a COADD table",
                      flag="MISSING_HDU")


def read_lamost_header(path: str | Path) -> dict[str, Any]:
    """Header metadata and layout only (no pixel data read)."""
    with open_fits(path) as fits:
        header = guarded_read(path, "primary header", fits[0].read_header)
        meta = header_meta(header, path)
        meta["LAYOUT"] = detect_layout(fits, path)
    return meta


def read_lamost(path: str | Path) -> LamostSpectrum:
    """Read one LAMOST spectrum in either layout.

    Raises FormatError (with the flag bit to record) for files that are not LAMOST spectra.
    """
    with open_fits(path) as fits:
        header = guarded_read(path, "primary header", fits[0].read_header)
        meta = header_meta(header, path)
        layout = detect_layout(fits, path)
        meta["LAYOUT"] = layout
        if layout == "image":
            data = guarded_read(path, "primary image", fits[0].read)
            data = np.asarray(data)
            npix = data.shape[1]
            flux, ivar = data[0], data[1]
            wave = np.asarray(data[2], dtype=np.float64)
            if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
                wave = _wave_from_coeffs(meta, npix, path)
            andmask = data[3] if data.shape[0] > 3 else np.zeros(npix)
            ormask = data[4] if data.shape[0] > 4 else np.zeros(npix)
        else:
            hdu = fits["COADD"]
            cols = hdu.get_colnames()
            missing = [c for c in ("FLUX", "IVAR", "WAVELENGTH") if c not in cols]
            if missing:
                raise FormatError(path, f"COADD lacks column(s) {', '.join(missing)}",
                                  flag="MISSING_HDU")
            row = guarded_read(path, "COADD table", hdu.read, rows=[0])[0]
            flux = np.ravel(row["FLUX"])
            ivar = np.ravel(row["IVAR"])
            wave = np.ravel(row["WAVELENGTH"]).astype(np.float64)
            npix = flux.size
            andmask = np.ravel(row["ANDMASK"]) if "ANDMASK" in cols else np.zeros(npix)
            ormask = np.ravel(row["ORMASK"]) if "ORMASK" in cols else np.zeros(npix)
    if not (flux.size == ivar.size == wave.size == andmask.size == ormask.size):
        raise FormatError(path, f"array lengths differ (flux {flux.size}, ivar {ivar.size}, "
                                f"wavelength {wave.size})", flag="BAD_SHAPE")
    return LamostSpectrum(wave=wave, flux=np.asarray(flux, dtype=np.float32),
                          ivar=np.asarray(ivar, dtype=np.float32),
                          andmask=np.asarray(andmask).astype(np.int32),
                          ormask=np.asarray(ormask).astype(np.int32), meta=meta)


def _wave_from_coeffs(meta: dict[str, Any], npix: int, path: str | Path) -> np.ndarray:
    c0, c1 = meta["COEFF0"], meta["COEFF1"]
    if not (math.isfinite(c0) and math.isfinite(c1) and c1 > 0):
        raise FormatError(path, "no valid wavelength row and no COEFF0/COEFF1", flag="BAD_SHAPE")
    return 10.0 ** (c0 + c1 * np.arange(npix))
