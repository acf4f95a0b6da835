"""Reference-label catalogues: APOGEE DR17 allStar-like FITS, and generic CSV/FITS tables.

Both readers return a :class:`LabelTable` with the labels specbridge learns, in its own names
and units (:mod:`specbridge.labels`: ``teff`` K, ``logg``, ``feh``, ``alpha_fe`` dex), each
with an uncertainty (NaN when unknown), plus what the cross-match needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specbridge.io.fitsutil import FormatError, guarded_read, open_fits
from specbridge.labels import LABEL_NAMES as LABELS

# APOGEE DR17 ASPCAPFLAG: bits >= 16 are the BAD bits (STAR_BAD = 23 among them)
ASPCAPFLAG_BAD_MASK = ~np.int64((1 << 16) - 1)
# APOGEE DR17 STARFLAG bits that make a star's parameters unreliable:
# 3 VERY_BRIGHT_NEIGHBOR, 4 LOW_SNR
STARFLAG_BAD_MASK = (1 << 3) | (1 << 4)
APOGEE_SENTINELS = (-9999.0, -9999.99, 99999.0, 9999.0)


@dataclass
class LabelTable:
    """n reference stars. ``values``/``errors``: label -> (n,) float64 (NaN if unknown);
    ``bad``: (n,) bool, the star's labels are flagged unreliable; ``gaia_id``: (n,) int64,
    -1 if unknown; ``ra``/``dec``: (n,) deg (NaN if unknown); ``ids``: (n,) str;
    ``spec_id`` (n,) int64 and ``file`` (n,) str when the table keys spectra directly."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    gaia_id: np.ndarray
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    bad: np.ndarray
    spec_id: np.ndarray | None = None
    file: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.ids.size)


def _clean(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).copy()
    x[~np.isfinite(x)] = np.nan
    for s in APOGEE_SENTINELS:
        x[np.isclose(x, s)] = np.nan
    return x


def _strs(x) -> np.ndarray:
    return np.array([v.decode().strip() if isinstance(v, bytes) else str(v).strip() for v in x])


def read_apogee_allstar(path: str | Path, starflag_bad_mask: int = STARFLAG_BAD_MASK,
                        ) -> LabelTable:
    """Read an APOGEE DR17 allStar-like FITS table (first binary-table HDU).

    [alpha/Fe] comes from ALPHA_FE when present, else ALPHA_M + M_H - FE_H (ASPCAP's [alpha/M]
    referred to iron). Stars with an ASPCAPFLAG BAD bit (>= 16) or a STARFLAG bit in
    ``starflag_bad_mask`` are marked ``bad``.
    """
    with open_fits(path) as fits:
        hdu = next((h for h in fits if h.get_exttype() == "BINARY_TBL"), None)
        if hdu is None:
            raise FormatError(path, "no binary table HDU", flag="MISSING_HDU")
        cols = set(hdu.get_colnames())
        need = {"TEFF", "LOGG", "FE_H", "RA", "DEC"}
        if not need <= cols:
            raise FormatError(path, f"allStar table lacks column(s) "
                                    f"{', '.join(sorted(need - cols))}", flag="MISSING_HDU")
        t = guarded_read(path, "allStar table", hdu.read)
    n = len(t)

    def col(name: str) -> np.ndarray:
        return _clean(t[name]) if name in cols else np.full(n, np.nan)

    values = {"teff": col("TEFF"), "logg": col("LOGG"), "feh": col("FE_H")}
    errors = {"teff": col("TEFF_ERR"), "logg": col("LOGG_ERR"), "feh": col("FE_H_ERR")}
    if "ALPHA_FE" in cols:
        values["alpha_fe"], errors["alpha_fe"] = col("ALPHA_FE"), col("ALPHA_FE_ERR")
    else:
        values["alpha_fe"] = col("ALPHA_M") + col("M_H") - col("FE_H")
        errors["alpha_fe"] = col("ALPHA_M_ERR")
    bad = np.zeros(n, dtype=bool)
    if "ASPCAPFLAG" in cols:
        bad |= (t["ASPCAPFLAG"].astype(np.int64) & ASPCAPFLAG_BAD_MASK) != 0
    if "STARFLAG" in cols:
        bad |= (t["STARFLAG"].astype(np.int64) & starflag_bad_mask) != 0
    gaia = (t["GAIAEDR3_SOURCE_ID"].astype(np.int64) if "GAIAEDR3_SOURCE_ID" in cols
            else np.full(n, -1, dtype=np.int64))
    gaia = np.where(gaia > 0, gaia, -1)
    ids = _strs(t["APOGEE_ID"]) if "APOGEE_ID" in cols else np.arange(n).astype(str)
    return LabelTable(ids=ids, ra=col("RA"), dec=col("DEC"), gaia_id=gaia, values=values,
                      errors=errors, bad=bad, source=str(path))


def _read_table(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".txt", ".ecsv")):
        from astropy.table import Table

        try:
            fmt = "ascii.ecsv" if name.endswith(".ecsv") else "ascii.csv"
            t = Table.read(path, format=fmt)
        except Exception as exc:  # astropy raises many types for malformed text tables
            raise FormatError(path, f"cannot read table ({exc})") from None
        return {c: np.asarray(t[c]) for c in t.colnames}
    with open_fits(path) as fits:
        hdu = next((h for h in fits if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL")), None)
        if hdu is None:
            raise FormatError(path, "no table HDU", flag="MISSING_HDU")
        t = guarded_read(path, "table", hdu.read)
    return {c: np.asarray(t[c]) for c in t.dtype.names}


KEY_FIELDS = ("id", "file", "spec_id", "ra", "dec", "gaia", "bad")


def read_label_table(path: str | Path, columns: Mapping[str, str]) -> LabelTable:
    """Read a CSV/ECSV/FITS label table with a column mapping.

    ``columns`` maps specbridge names to the table's: any of ``teff``, ``logg``, ``feh``,
    ``alpha_fe`` and ``<label>_err``, plus keys for the cross-match: ``file`` (spectrum file
    name), ``spec_id`` (OBSID / TARGETID), ``gaia`` (Gaia source ID), ``ra``/``dec`` (deg),
    ``id`` (the catalogue's own star name) and ``bad`` (non-zero: unreliable).
    Labels not mapped are NaN. A mapped column missing from the table is an error.
    """
    t = _read_table(path)
    unknown = set(columns) - set(LABELS) - {f"{lab}_err" for lab in LABELS} - set(KEY_FIELDS)
    if unknown:
        raise FormatError(path, f"unknown column mapping key(s) {sorted(unknown)}")
    missing = sorted(v for v in columns.values() if v not in t)
    if missing:
        raise FormatError(path, f"label table lacks column(s) {', '.join(missing)} "
                                f"(has {', '.join(sorted(t))})", flag="MISSING_HDU")
    n = len(next(iter(t.values()))) if t else 0

    def get(key: str) -> np.ndarray:
        return _clean(t[columns[key]]) if key in columns else np.full(n, np.nan)

    values = {lab: get(lab) for lab in LABELS}
    errors = {lab: get(f"{lab}_err") for lab in LABELS}
    gaia = (np.asarray(t[columns["gaia"]]).astype(np.int64) if "gaia" in columns
            else np.full(n, -1, dtype=np.int64))
    bad = (np.asarray(t[columns["bad"]]).astype(bool) if "bad" in columns
           else np.zeros(n, dtype=bool))
    ids = _strs(t[columns["id"]]) if "id" in columns else np.arange(n).astype(str)
    spec_id = (np.asarray(t[columns["spec_id"]]).astype(np.int64) if "spec_id" in columns
               else None)
    files = (np.array([Path(f).name for f in _strs(t[columns["file"]])])
             if "file" in columns else None)
    return LabelTable(ids=ids, ra=get("ra"), dec=get("dec"), gaia_id=np.where(gaia > 0, gaia, -1),
                      values=values, errors=errors, bad=bad, spec_id=spec_id, file=files,
                      source=str(path))
