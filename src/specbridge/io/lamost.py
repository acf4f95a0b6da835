"""LAMOST low-resolution spectra, both layouts, gzipped or not.

* up to DR8 (``image``): a primary image of 5 rows (flux, inverse variance, wavelength,
  andmask, ormask); header COEFF0/COEFF1 give log10(lambda) of pixel 0 and the step.
  The 2011 pilot-survey files (pipeline v2.6.4, released with DR1) have the same shape but
  their third row is the continuum-normalised flux (EXTEN0 'Flux Inverse Subcontinuum Andmask
  Ormask'), values around 1: not wavelengths.
* from DR9 (``table``): an empty primary HDU and a one-row binary table ``COADD`` with array
  columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK (and NORMALIZATION).

The file is checked against itself: the wavelength row (column) is used only if it is finite,
positive, strictly increasing and within :data:`WAVE_TOL_PIX` pixel of the header's log-linear
grid ``log10(lambda_i) = COEFF0 + COEFF1 * i`` (where the header has one); otherwise the header
grid is used and the spectrum carries the non-fatal flag ``WAVE_FROM_HEADER``
(:attr:`LamostSpectrum.flags`, copied into the manifest's FLAGS).

Wavelengths are returned in vacuum Angstrom: every LAMOST file seen has VACUUM = T; a file with
VACUUM = F is converted from air. Metadata come from the primary header; the DR1 spellings
SN_U...SN_Z of the S/N keywords are accepted, and LAMOST's null value -9999 (e.g. Z = -9999
when the pipeline measured no redshift) is read as NaN. (The pilot headers write S/N = 99.0
where the DR1 catalogue has -9999: a ceiling, not a null; kept as written.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specbridge import flags
from specbridge.io.fitsutil import FormatError, extnames, guarded_read, open_fits

SNR_KEYS = {band: (f"SNR{band.upper()}", f"SN_{band.upper()}") for band in "ugriz"}
#: LAMOST's null value in headers and catalogues (read as NaN)
LAMOST_NULL = -9999.0
#: largest offset (in pixels, i.e. in units of COEFF1 in log10 lambda) between a file's
#: wavelength row and its header grid for the row to be used; the real files agree to 0.02
#: pixel (float32 rounding; a few DR7/DR8 files whose grid starts at exactly 3700 A), while
#: air vs vacuum would be ~1.2 pixels.
WAVE_TOL_PIX = 0.1


@dataclass
class LamostSpectrum:
    """One LAMOST spectrum. wave: (npix,) float64 vacuum Angstrom; flux, ivar: (npix,) float32
    (flux in the survey's relative units); andmask, ormask: (npix,) int32; flags: flag bits
    (specbridge.flags) the reader found for this spectrum (e.g. WAVE_FROM_HEADER)."""

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    andmask: np.ndarray
    ormask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    flags: int = 0


def _num(header, *keys: str) -> float:
    for k in keys:
        if k in header:
            try:
                v = float(header[k])
            except (TypeError, ValueError):
                return math.nan
            return v if math.isfinite(v) and v != LAMOST_NULL else math.nan
    return math.nan


def _int(header, key: str) -> int | None:
    try:
        return int(header[key])
    except (KeyError, TypeError, ValueError):
        return None


def _bool(header, key: str) -> bool | None:
    v = header.get(key) if key in header else None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str) and v.strip().upper() in ("T", "F"):
        return v.strip().upper() == "T"
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
        "VACUUM": _bool(header, "VACUUM"),
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
            name = _exten_names(header)[2:3]  # the pilot files: 'Subcontinuum'
            what = f"image row 3 ({name[0]})" if name else "image row 3"
            wave = np.asarray(data[2], dtype=np.float64)
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
            what = "COADD column WAVELENGTH"
            flux = np.ravel(row["FLUX"])
            ivar = np.ravel(row["IVAR"])
            wave = np.ravel(row["WAVELENGTH"]).astype(np.float64)
            npix = flux.size
            andmask = np.ravel(row["ANDMASK"]) if "ANDMASK" in cols else np.zeros(npix)
            ormask = np.ravel(row["ORMASK"]) if "ORMASK" in cols else np.zeros(npix)
    if not (flux.size == ivar.size == wave.size == andmask.size == ormask.size):
        raise FormatError(path, f"array lengths differ (flux {flux.size}, ivar {ivar.size}, "
                                f"wavelength {wave.size})", flag="BAD_SHAPE")
    wave, source, note = choose_wavelengths(wave, header, path, what)
    spec_flags = flags.flag("WAVE_FROM_HEADER") if source == "header" else 0
    meta["WAVE_SOURCE"], meta["WAVE_NOTE"] = source, note
    if meta["VACUUM"] is False:
        wave = air_to_vacuum(wave)
    return LamostSpectrum(wave=wave, flux=np.asarray(flux, dtype=np.float32),
                          ivar=np.asarray(ivar, dtype=np.float32),
                          andmask=np.asarray(andmask).astype(np.int32),
                          ormask=np.asarray(ormask).astype(np.int32), meta=meta,
                          flags=spec_flags)


def _exten_names(header) -> list[str]:
    """Row names of the primary image from EXTEN0 ('Flux, Inverse, Wavelength, Andmask,
    Ormask'; the pilot files: 'Flux Inverse Subcontinuum Andmask Ormask'); [] if absent."""
    return _str(header, "EXTEN0").replace(",", " ").split()


def header_grid(header, npix: int) -> tuple[np.ndarray, float] | None:
    """The header's log-linear wavelength grid (npix,) and its step in log10 lambda, or None
    when the header has no usable one. COEFF0/COEFF1 (LAMOST: log10 lambda of pixel 0 and the
    step); else the WCS CRVAL1/CD1_1 (or CDELT1) with CRPIX1 (1-based, LAMOST writes 1)."""
    c0, c1, shift = _num(header, "COEFF0"), _num(header, "COEFF1"), 0.0
    if not (math.isfinite(c0) and math.isfinite(c1)):
        c0, c1 = _num(header, "CRVAL1"), _num(header, "CD1_1", "CDELT1")
        crpix = _num(header, "CRPIX1")
        shift = 1.0 - crpix if math.isfinite(crpix) else 0.0
    # a log10 start outside 3-4.5 (1000-31600 A) is not a log-linear optical grid
    if not (math.isfinite(c0) and math.isfinite(c1) and c1 > 0 and 3.0 < c0 < 4.5):
        return None
    return 10.0 ** (c0 + c1 * (np.arange(npix) + shift)), c1


def choose_wavelengths(row: np.ndarray, header, path: str | Path, what: str = "",
                       ) -> tuple[np.ndarray, str, str]:
    """The wavelengths to use for a spectrum whose file gives ``row`` and ``header``.

    Returns ``(wave, source, note)``: source ``row`` when the row is finite, positive, strictly
    increasing and within :data:`WAVE_TOL_PIX` pixel of the header grid (or the header has
    none); else ``header`` (the header grid) with ``note`` saying why. FormatError (BAD_SHAPE)
    when neither is usable."""
    row = np.asarray(row, dtype=np.float64)
    what = what or "wavelength row"
    if row.size == 0:
        raise FormatError(path, "the spectrum has no pixels", flag="BAD_SHAPE")
    grid = header_grid(header, row.size)
    if not np.all(np.isfinite(row)):
        problem = f"{what} has non-finite values"
    elif np.any(row <= 0):
        problem = f"{what} has values <= 0 ({row.min():.3g}..{row.max():.3g})"
    elif row.size > 1 and np.any(np.diff(row) <= 0):
        problem = f"{what} is not increasing ({row.min():.3g}..{row.max():.3g})"
    else:
        problem = ""
    if grid is None:
        if problem:
            raise FormatError(path, f"{problem} and the header has no COEFF0/COEFF1",
                              flag="BAD_SHAPE")
        return row, "row", ""
    wave, step = grid
    if not problem:
        off = float(np.max(np.abs(np.log10(row) - np.log10(wave)))) / step
        if off <= WAVE_TOL_PIX:
            return row, "row", ""
        problem = f"{what} is up to {off:.3g} pixels off COEFF0/COEFF1"
    return wave, "header", problem


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelengths (Angstrom), the VALD / Piskunov refraction formula."""
    s2 = (1e4 / np.asarray(wave_air, dtype=np.float64)) ** 2
    n = (1.0 + 0.00008336624212083 + 0.02408926869968 / (130.1065924522 - s2)
         + 0.0001599740894897 / (38.92568793293 - s2))
    return wave_air * n
