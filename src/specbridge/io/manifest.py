"""The manifest: one row per input spectrum, with IDs, position, redshift, S/N, reference labels
and flag bits. Bad input is recorded with a reason, never dropped.

Written as a FITS binary table (EXTNAME MANIFEST), atomically. Column meanings are in
docs/datamodel/manifest.md.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fitsio
import numpy as np

from specbridge import __version__, flags
from specbridge.atomic import atomic_output
from specbridge.io import desi, lamost
from specbridge.io.crossmatch import crossmatch
from specbridge.io.fitsutil import FormatError, opened
from specbridge.io.labels import LabelTable
from specbridge.io.selection import Selection, selection_reasons
from specbridge.kernels.grid import LogGrid
from specbridge.labels import LABELS
from specbridge.splits import star_keys

log = logging.getLogger(__name__)

#: (name, numpy dtype, unit, description) of every manifest column, in order.
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("SURVEY", "U8", "", "lamost or desi"),
    ("FILE", "U256", "", "path of the input file"),
    ("ROW", "i4", "", "row of the spectrum in the file (-1: the file could not be read)"),
    ("LAYOUT", "U16", "", "desi-coadd, desi-spectra, lamost-image or lamost-table"),
    ("DESI_SURVEY", "U8", "", "DESI SURVEY (main, sv3, ...; header, else file name); '' "
     "if unknown or LAMOST"),
    ("DESI_PROGRAM", "U8", "", "DESI PROGRAM (bright, dark, backup, ...); '' if unknown or "
     "LAMOST"),
    ("SPECID", "i8", "", "TARGETID (DESI) or OBSID (LAMOST); negative if synthetic (NO_ID)"),
    ("GAIA_ID", "i8", "", "Gaia source ID if the file gives one, else -1"),
    ("RA", "f8", "deg", "right ascension"),
    ("DEC", "f8", "deg", "declination"),
    ("Z", "f8", "", "redshift (DESI: redrock; LAMOST: pipeline), NaN if none"),
    ("ZERR", "f8", "", "redshift uncertainty"),
    ("ZWARN", "i8", "", "redrock ZWARN (DESI), -1 if none"),
    ("CLASS", "U8", "", "survey classification (SPECTYPE / CLASS), upper case"),
    ("OBJTYPE", "U8", "", "DESI FIBERMAP OBJTYPE (TGT, SKY, ...); '' for LAMOST"),
    ("DESI_TARGET", "i8", "", "DESI FIBERMAP DESI_TARGET OR-ed with SV1/SV2/SV3_DESI_TARGET; "
     "0 for LAMOST"),
    ("MWS_TARGET", "i8", "", "DESI FIBERMAP MWS_TARGET OR-ed with SV1/SV2/SV3_MWS_TARGET; "
     "0 for LAMOST"),
    ("SNR", "f4", "", "median per-pixel S/N over the common grid range (4000-5600 A)"),
    ("WAVE_MIN", "f8", "Angstrom", "first wavelength of the arm used (vacuum)"),
    ("WAVE_MAX", "f8", "Angstrom", "last wavelength of the arm used (vacuum)"),
    ("NPIX", "i4", "", "pixels of the arm used"),
    ("LABEL_ID", "U32", "", "ID of the matched reference star ('' if none)"),
    ("STAR_KEY", "i8", "", "key of the star (catalogue ID, else Gaia ID, else sky group): "
     "splits follow it"),
    ("MATCH_METHOD", "U8", "", "file, spec_id, gaia or position"),
    ("MATCH_SEP", "f4", "arcsec", "separation of a positional match"),
    ("N_MATCH", "i2", "", "label-catalogue candidates for this spectrum"),
    ("TEFF", "f4", "K", "reference effective temperature"),
    ("TEFF_ERR", "f4", "K", "its uncertainty"),
    ("LOGG", "f4", "dex", "reference surface gravity log10(g / cm s^-2)"),
    ("LOGG_ERR", "f4", "dex", "its uncertainty"),
    ("FEH", "f4", "dex", "reference [Fe/H]"),
    ("FEH_ERR", "f4", "dex", "its uncertainty"),
    ("ALPHA_FE", "f4", "dex", "reference [alpha/Fe]"),
    ("ALPHA_FE_ERR", "f4", "dex", "its uncertainty"),
    ("FLAGS", "i8", "", "flag bits (specbridge.flags, docs/datamodel/flags.md)"),
    ("FLAG_REASON", "U128", "", "why a fatal flag was set ('' if none)"),
)
DTYPE = np.dtype([(name, dt) for name, dt, _, _ in COLUMNS])
#: The manifest row as stored on disk: text as ASCII bytes (1 byte a character, not 4).
DISK_DTYPE = np.dtype([(name, dt.replace("U", "S")) for name, dt, _, _ in COLUMNS])
#: The row as rank 0 holds it at survey scale: :data:`DISK_DTYPE` without FILE (the path is
#: kept once per file, see :class:`CompactManifest`): 378 bytes a row instead of 2,074.
COMPACT_DTYPE = np.dtype([(name, DISK_DTYPE[name]) for name in DISK_DTYPE.names
                          if name != "FILE"])
SYNTHETIC_ID_OFFSET = 10**12
#: rows cross-matched and keyed at a time on rank 0 (bounds the temporaries of those steps)
FINISH_CHUNK = 500_000
LABEL_COLUMNS = {lab.name: lab.column for lab in LABELS}


@dataclass(frozen=True)
class GridRange:
    """Wavelength range (vacuum Angstrom) the spectra must cover: the common grid's."""

    wmin: float
    wmax: float

    @classmethod
    def of(cls, grid: LogGrid) -> GridRange:
        wave = grid.wave
        return cls(float(wave[0]), float(wave[-1]))

    @classmethod
    def from_config(cls, grid: dict[str, Any]) -> GridRange:
        return cls.of(LogGrid.from_config(grid))


DEFAULT_RANGE = GridRange.of(LogGrid())


def empty_rows(n: int) -> np.ndarray:
    """``n`` manifest rows with neutral values (NaN floats, -1 IDs, no flags)."""
    rows = np.zeros(n, dtype=DTYPE)
    for name, dt, _, _ in COLUMNS:
        if dt.startswith("f"):
            rows[name] = np.nan
    rows["ROW"] = -1
    rows["SPECID"] = -1
    rows["GAIA_ID"] = -1
    rows["ZWARN"] = -1
    return rows


def pixel_quality(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                  grid: GridRange) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-spectrum quality over the grid range.

    wave: (npix,); flux, ivar: (nspec, npix). Returns (snr (nspec,) median S/N of usable
    pixels, nonfinite (nspec,) bool, n_valid (nspec,) int, covers (bool scalar as array)).
    """
    inside = (wave >= grid.wmin) & (wave <= grid.wmax)
    f = flux[:, inside]
    iv = ivar[:, inside]
    finite = np.isfinite(f) & np.isfinite(iv)
    nonfinite = ~finite.all(axis=1)
    good = finite & (iv > 0)
    with np.errstate(invalid="ignore"):
        s = np.where(good, np.abs(f) * np.sqrt(np.where(good, iv, 0.0)), np.nan)
    n_valid = good.sum(axis=1)
    snr = np.full(flux.shape[0], np.nan, dtype=np.float32)
    ok = n_valid > 0
    if ok.any():
        snr[ok] = np.nanmedian(s[ok], axis=1)
    step = np.median(np.diff(wave)) if wave.size > 1 else 0.0
    covers = wave.size > 1 and wave[0] <= grid.wmin + step and wave[-1] >= grid.wmax - step
    return snr, nonfinite, n_valid, np.asarray(covers)


def _chars(dt: np.dtype) -> int:
    """Characters of a fixed-width text dtype (str 'U' or ASCII bytes 'S')."""
    return dt.itemsize // 4 if dt.kind == "U" else dt.itemsize


def _text(col: np.ndarray) -> np.ndarray:
    """A text column as str (ASCII bytes decoded)."""
    return col.astype(str) if col.dtype.kind == "S" else col


def _set(rows: np.ndarray, i: Any, name: str, reason: str = "") -> None:
    """Set flag ``name`` on rows ``i`` (index, slice or mask) of manifest rows (:data:`DTYPE`
    or the byte-text dtypes); append ``reason`` to FLAG_REASON for fatal flags
    ('; '-separated, cut at the column width)."""
    rows["FLAGS"][i] |= flags.flag(name)
    if not (reason and flags.BY_NAME[name].fatal):
        return
    col = rows["FLAG_REASON"]
    width = _chars(col.dtype)
    idx = np.atleast_1d(np.arange(rows.size)[i])
    empty = col[idx] == col.dtype.type()
    col[idx[empty]] = reason[:width]
    for k in idx[~empty]:
        cur = str(_text(col[k:k + 1])[0])
        col[k] = f"{cur}; {reason}"[:width]


def _failed_file(survey: str, path: str, err: FormatError, layout: str = "") -> np.ndarray:
    row = empty_rows(1)
    row["SURVEY"] = survey
    row["FILE"] = path
    row["LAYOUT"] = layout
    _set(row, 0, err.flag, err.reason)
    return row


def _flag_quality(rows: np.ndarray, snr, nonfinite, n_valid, covers, wave) -> None:
    rows["SNR"] = snr
    rows["WAVE_MIN"] = wave[0] if wave.size else np.nan
    rows["WAVE_MAX"] = wave[-1] if wave.size else np.nan
    rows["NPIX"] = wave.size
    if not covers:
        _set(rows, slice(None), "NO_COVERAGE",
             f"wavelengths {wave[0]:.0f}-{wave[-1]:.0f} A miss the grid range")
    _set(rows, nonfinite, "NONFINITE")
    _set(rows, n_valid == 0, "NO_VALID_PIXELS", "no pixel with ivar > 0 and finite flux")
    _set(rows, (n_valid > 0) & (snr < 1), "LOW_SNR")


def scan_lamost_file(path: str, grid: GridRange = DEFAULT_RANGE) -> np.ndarray:
    """One manifest row for a LAMOST file (a flagged row if it cannot be read)."""
    try:
        spec = lamost.read_lamost(path)
    except FormatError as err:
        return _failed_file("lamost", path, err)
    m = spec.meta
    row = empty_rows(1)
    row["SURVEY"] = "lamost"
    row["FILE"] = path
    row["ROW"] = 0
    row["LAYOUT"] = f"lamost-{m['LAYOUT']}"
    row["FLAGS"] |= spec.flags  # what the reader found (e.g. WAVE_FROM_HEADER)
    if m["OBSID"] is not None:
        row["SPECID"] = m["OBSID"]
    else:
        _set(row, 0, "NO_ID")
    row["RA"], row["DEC"] = m["RA"], m["DEC"]
    row["Z"], row["ZERR"] = m["Z"], m["Z_ERR"]
    row["CLASS"] = m["CLASS"].upper()[:8]
    if math.isnan(m["RA"]) or math.isnan(m["DEC"]):
        _set(row, 0, "BAD_HEADER")
    if math.isnan(m["Z"]):
        _set(row, 0, "NO_REDSHIFT")
    if m["CLASS"] and m["CLASS"].upper() != "STAR":
        _set(row, 0, "NOT_STAR")
    if spec.flux.size < 2 or np.any(np.diff(spec.wave) <= 0):
        _set(row, 0, "BAD_SHAPE", "wavelengths not increasing")
        return row
    q = pixel_quality(spec.wave, spec.flux[None, :], spec.ivar[None, :], grid)
    _flag_quality(row, *q, spec.wave)
    return row


def scan_desi_file(path: str, redshifts: dict[int, tuple[float, float, int, str]] | None = None,
                   grid: GridRange = DEFAULT_RANGE, arm: str = "B") -> np.ndarray:
    """Manifest rows for every spectrum of a DESI file; reads FIBERMAP and one arm's
    WAVELENGTH/FLUX/IVAR only. A file that cannot be read gives one flagged row."""
    layout = desi.file_layout(path)
    try:
        with opened(path) as (fits, _):
            survey_program = desi.read_survey_program(fits)
            nrows = desi.desi_nrows(fits)
            fm = desi.read_fibermap(fits)
            a = desi.read_arm(fits, arm, parts=("FLUX", "IVAR"))
    except FormatError as err:
        row = _failed_file("desi", path, err, layout)
        row["DESI_SURVEY"], row["DESI_PROGRAM"] = desi.survey_program_from_name(path)
        return row
    if a.flux.shape[0] != nrows or (fm is not None and len(fm) != nrows):
        return _failed_file("desi", path, FormatError(
            path, f"{arm}_FLUX has {a.flux.shape[0]} rows, FIBERMAP {nrows}", "BAD_SHAPE"),
            layout)
    rows = empty_rows(nrows)
    rows["SURVEY"] = "desi"
    rows["FILE"] = path
    rows["ROW"] = np.arange(nrows)
    rows["LAYOUT"] = layout
    rows["DESI_SURVEY"], rows["DESI_PROGRAM"] = survey_program
    if fm is None:
        # no FIBERMAP: synthetic negative IDs unique within the file, flagged NO_ID
        rows["SPECID"] = -(np.arange(nrows) + 1)
        _set(rows, slice(None), "NO_ID")
    else:
        tid = fm["TARGETID"].astype(np.int64)
        rows["SPECID"] = tid
        rows["RA"] = fm["TARGET_RA"] if "TARGET_RA" in fm.dtype.names else np.nan
        rows["DEC"] = fm["TARGET_DEC"] if "TARGET_DEC" in fm.dtype.names else np.nan
        if "OBJTYPE" in fm.dtype.names:
            obj = np.char.upper(np.char.strip(fm["OBJTYPE"].astype("U8")))
            rows["OBJTYPE"] = obj
            _set(rows, obj == "SKY", "SKY_FIBER", "sky fibre")
        rows["DESI_TARGET"] = desi.target_bits(fm, "DESI_TARGET")
        rows["MWS_TARGET"] = desi.target_bits(fm, "MWS_TARGET")
        if "REF_ID" in fm.dtype.names and "REF_CAT" in fm.dtype.names:
            cat = np.char.strip(fm["REF_CAT"].astype("U2"))
            is_gaia = np.char.startswith(cat, "G") & (fm["REF_ID"] > 0)
            rows["GAIA_ID"] = np.where(is_gaia, fm["REF_ID"], -1)
        _set(rows, tid < 0, "EMPTY_FIBER", "negative TARGETID (empty fibre)")
        if redshifts is not None:
            for i, t in enumerate(tid):
                z = redshifts.get(int(t))
                if z is not None:
                    rows["Z"][i], rows["ZERR"][i], rows["ZWARN"][i] = z[0], z[1], z[2]
                    rows["CLASS"][i] = z[3].upper()[:8]
    _set(rows, ~np.isfinite(rows["Z"]), "NO_REDSHIFT")
    has_class = rows["CLASS"] != ""
    _set(rows, has_class & (rows["CLASS"] != "STAR"), "NOT_STAR")
    q = pixel_quality(a.wave, a.flux, a.ivar, grid)
    _flag_quality(rows, *q, a.wave)
    return rows


def flag_duplicates(rows: np.ndarray) -> None:
    """Flag all but the highest-S/N spectrum of every repeated non-negative SPECID within one
    DESI SURVEY and PROGRAM, in place. DESI coadds a target once per SURVEY-PROGRAM, so the
    same TARGETID in two programs is two observations (both kept; the VAC marks one PRIMARY),
    while a repeat within one is a duplicated input."""
    ids = rows["SPECID"]
    valid = ids >= 0
    snr = np.nan_to_num(rows["SNR"].astype(np.float64), nan=-1.0)
    _, surv = np.unique(rows["DESI_SURVEY"], return_inverse=True)
    prog_names, prog = np.unique(rows["DESI_PROGRAM"], return_inverse=True)
    group = surv.ravel().astype(np.int64) * max(prog_names.size, 1) + prog.ravel()
    order = np.lexsort((-snr, group, ids))
    same = (ids[order][1:] == ids[order][:-1]) & (group[order][1:] == group[order][:-1])
    dup = np.zeros(rows.size, bool)
    dup[order[1:]] = same
    dup &= valid
    _set(rows, dup, "DUPLICATE_ID", "ID repeated; a higher-S/N copy is kept")


def attach_labels(rows: np.ndarray, labels: LabelTable | None, radius_arcsec: float,
                  file_names: np.ndarray | None = None) -> None:
    """Cross-match rows to ``labels`` and fill the label columns and flags, in place;
    ``file_names`` (n,): the base name of each row's file (default: from its FILE)."""
    if labels is None:
        _set(rows, slice(None), "NO_LABEL")
        return
    if labels.file is None:  # the catalogue has no file names to match on
        files = None
    elif file_names is None:
        files = np.array([Path(f).name for f in _text(rows["FILE"])])
    else:
        files = file_names
    m = crossmatch(labels, rows["RA"], rows["DEC"], gaia_id=rows["GAIA_ID"],
                   spec_id=rows["SPECID"], file=files, radius_arcsec=radius_arcsec)
    hit = m.index >= 0
    j = m.index[hit]
    rows["LABEL_ID"][hit] = labels.ids[j]
    rows["MATCH_METHOD"] = m.method
    rows["MATCH_SEP"] = m.sep_arcsec
    rows["N_MATCH"] = m.n_candidates
    for lab, col in LABEL_COLUMNS.items():
        rows[col][hit] = labels.values[lab][j]
        rows[f"{col}_ERR"][hit] = labels.errors[lab][j]
    _set(rows, ~hit, "NO_LABEL")
    _set(rows, m.n_candidates > 1, "AMBIGUOUS_MATCH")
    incomplete = np.zeros(rows.size, bool)
    incomplete[hit] = labels.bad[j]
    _set(rows, incomplete, "BAD_LABEL")


def expand_globs(patterns: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated paths matching the glob patterns; a pattern matching nothing is
    kept as a literal path so that the manifest records it as missing (UNREADABLE_FILE)."""
    out: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat, recursive=True))
        out.extend(hits if hits else [pat])
    return sorted(set(out), key=out.index)


def scan_file(survey: str, path: str,
              redshifts: dict[int, tuple[float, float, int, str]] | None = None,
              grid: GridRange = DEFAULT_RANGE) -> np.ndarray:
    """Manifest rows of one input file of ``survey`` (flagged rows when it cannot be read)."""
    if survey == "lamost":
        return scan_lamost_file(path, grid)
    if survey == "desi":
        return scan_desi_file(path, redshifts, grid)
    raise ValueError(f"unknown survey {survey!r}")


def scan_files(survey: str, files: Sequence[str],
               redshifts: dict[int, tuple[float, float, int, str]] | None = None,
               grid: GridRange = DEFAULT_RANGE,
               progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """The rows of each of ``files`` (one array per file, in order); ``progress(done,
    total)`` after each file."""
    parts = []
    for k, path in enumerate(files):
        parts.append(scan_file(survey, path, redshifts, grid))
        if progress is not None:
            progress(k + 1, len(files))
    return parts


def apply_selection(survey: str, rows: np.ndarray, selection: Selection) -> int:
    """Flag ``NOT_SELECTED`` (with the reason) on the rows of ``survey`` that the target
    selection leaves out, in place; returns how many. Rows already fatal are not judged."""
    reasons = selection_reasons(survey, rows, selection)
    out = reasons != ""
    rows["FLAGS"][out] |= flags.flag("NOT_SELECTED")
    width = rows.dtype["FLAG_REASON"].itemsize // 4
    rows["FLAG_REASON"][out] = reasons[out].astype(f"U{width}")  # cut at the column width
    return int(out.sum())


def compact_part(survey: str, rows: np.ndarray, selection: Selection | None = None
                 ) -> np.ndarray:
    """The rows of one file (:data:`DTYPE`) with the target ``selection`` flagged (if given;
    the step needs only the row itself, so it runs where the file was read) as
    :data:`COMPACT_DTYPE` (text as bytes, no FILE)."""
    if selection is not None:
        apply_selection(survey, rows, selection)
    out = np.empty(rows.size, COMPACT_DTYPE)
    for name in COMPACT_DTYPE.names:
        out[name] = rows[name]
    return out


@dataclass
class CompactManifest:
    """A manifest as rank 0 holds it at survey scale: ``rows`` (n,) of
    :data:`COMPACT_DTYPE`, ``files`` the input paths and ``file_idx`` (n,) int32 the file of
    each row. :func:`write_manifest` writes it in blocks."""

    rows: np.ndarray
    files: list[str]
    file_idx: np.ndarray

    @property
    def size(self) -> int:
        return int(self.rows.size)

    @functools.cached_property
    def _file_column(self) -> np.ndarray:
        """The paths as the FILE column stores them (converted once, not per block)."""
        return np.asarray(self.files or [""], dtype=DISK_DTYPE["FILE"])

    def block(self, a: int, b: int, dtype: np.dtype = DISK_DTYPE) -> np.ndarray:
        """Rows ``a:b`` with FILE, as ``dtype`` (:data:`DISK_DTYPE` or :data:`DTYPE`)."""
        out = np.empty(b - a, dtype)
        for name in COMPACT_DTYPE.names:
            out[name] = self.rows[name][a:b]
        out["FILE"] = self._file_column[self.file_idx[a:b]]
        return out

    def to_rows(self) -> np.ndarray:
        """Every row as :data:`DTYPE` (text as str)."""
        return self.block(0, self.size, DTYPE)


def finish_compact(survey: str, files: Sequence[str], rows: np.ndarray, sizes: np.ndarray,
                   labels: LabelTable | None = None, radius_arcsec: float = 1.0
                   ) -> CompactManifest:
    """The manifest from the compact rows (:func:`compact_part`) of every file, concatenated
    in the order of ``files`` (``sizes`` (n_files,): the rows of each; as
    :func:`specbridge.parallel.executor.map_gather_rows` gathers them): synthetic IDs,
    duplicates, the cross-match to ``labels`` and the star keys, the steps that need every
    row at once; done in place on ``rows``."""
    file_idx = np.repeat(np.arange(len(files), dtype=np.int32), np.asarray(sizes, np.int64))
    # files without IDs get synthetic negative IDs unique within the manifest, far below the
    # negative TARGETIDs of DESI's empty fibres
    no_id = (rows["FLAGS"] & flags.flag("NO_ID")) != 0
    rows["SPECID"][no_id] = -(SYNTHETIC_ID_OFFSET + np.flatnonzero(no_id))
    flag_duplicates(rows)
    by_file = None
    if labels is not None and labels.file is not None:
        by_file = np.array([Path(f).name for f in files] or [""], dtype=str)
    # the cross-match and the star keys are row by row: in chunks, so that their temporaries
    # (tens of bytes a row each) do not scale with the survey
    for a in range(0, rows.size, FINISH_CHUNK):
        sub = rows[a:a + FINISH_CHUNK]  # a view: filled in place
        names = None if by_file is None else by_file[file_idx[a:a + FINISH_CHUNK]]
        attach_labels(sub, labels, radius_arcsec, file_names=names)
        sub["STAR_KEY"] = star_keys(sub["LABEL_ID"], sub["GAIA_ID"], sub["RA"], sub["DEC"],
                                    sub["SPECID"])
    return CompactManifest(rows, list(files), file_idx)


def finish_manifest(survey: str, parts: Sequence[np.ndarray], labels: LabelTable | None = None,
                    radius_arcsec: float = 1.0, selection: Selection | None = None,
                    ) -> np.ndarray:
    """The manifest (:data:`DTYPE`) from the per-file rows ``parts`` (in input order):
    target selection (if given), then :func:`finish_compact`."""
    files = [str(p["FILE"][0]) if p.size else "" for p in parts]
    compact = [compact_part(survey, p, selection) for p in parts]
    rows = np.concatenate(compact) if compact else np.empty(0, COMPACT_DTYPE)
    sizes = np.array([p.size for p in compact], np.int64)
    return finish_compact(survey, files, rows, sizes, labels, radius_arcsec).to_rows()


def build_manifest(survey: str, files: Sequence[str], labels: LabelTable | None = None,
                   redshift_files: Sequence[str] = (), grid: GridRange = DEFAULT_RANGE,
                   radius_arcsec: float = 1.0,
                   progress: Callable[[int, int], None] | None = None,
                   selection: Selection | None = None) -> np.ndarray:
    """Scan ``files`` of one survey into manifest rows (every file, every spectrum), in one
    process; ``selection``: the target selection to flag (None: none)."""
    if survey not in ("lamost", "desi"):
        raise ValueError(f"unknown survey {survey!r}")
    zlookup = desi.redshift_lookup(redshift_files) if redshift_files else None
    parts = scan_files(survey, files, zlookup, grid, progress)
    return finish_manifest(survey, parts, labels, radius_arcsec, selection)


def write_manifest(path: str | Path, rows: np.ndarray | CompactManifest,
                   meta: dict[str, Any] | None = None, block: int = 250_000) -> None:
    """Write manifest rows (:data:`DTYPE`, or a :class:`CompactManifest`, written ``block``
    rows at a time) as FITS (EXTNAME MANIFEST, units, checksums), atomically."""
    header = [{"name": "SBVERS", "value": __version__, "comment": "specbridge version"},
              {"name": "NSPEC", "value": int(rows.size), "comment": "rows (input spectra)"},
              {"name": "NFATAL", "value": int(flags.is_fatal(
                  (rows.rows if isinstance(rows, CompactManifest) else rows)["FLAGS"]).sum()),
               "comment": "rows with a fatal flag"}]
    for k, v in (meta or {}).items():
        header.append({"name": k[:8].upper(), "value": v})
    units = [u for _, _, u, _ in COLUMNS]
    with atomic_output(path) as tmp, fitsio.FITS(str(tmp), "rw", clobber=True) as fits:
        if isinstance(rows, CompactManifest):
            fits.write(rows.block(0, min(block, rows.size)), extname="MANIFEST",
                       header=header, units=units)
            for a in range(block, rows.size, block):
                fits[-1].append(rows.block(a, min(a + block, rows.size)))
        else:
            fits.write(rows, extname="MANIFEST", header=header, units=units)
        fits[-1].write_checksum()


def read_manifest(path: str | Path) -> np.ndarray:
    """Manifest rows as a structured array with the dtype :data:`DTYPE` (strings as str). A
    column that a manifest of an earlier version lacks (DESI_TARGET, MWS_TARGET) takes its
    neutral value (:func:`empty_rows`)."""
    data = fitsio.read(str(path), ext="MANIFEST")
    rows = empty_rows(len(data))
    for name in DTYPE.names:
        if name not in data.dtype.names:
            continue
        col = data[name]
        if DTYPE[name].kind == "U":
            col = np.char.strip(col.astype(DTYPE[name]))
        rows[name] = col
    return rows



def read_manifest_columns(path: str | Path, columns: Sequence[str], chunk: int = 100_000,
                          ) -> dict[str, Any]:
    """Some columns of a manifest, in bounded memory at 10^7 rows: the numeric and short
    columns as arrays (n,); FILE, if asked for, factorised into ``files`` (nfiles,) object
    array of paths and ``file_idx`` (n,) int32, read ``chunk`` rows at a time (the column is
    256 bytes a row). ``survey`` is the survey of the first row. Unreadable file: UserError."""
    from specbridge.errors import UserError, describe
    from specbridge.io.fitsutil import fits_text

    plain = [c for c in columns if c != "FILE"]
    try:
        with fitsio.FITS(str(path)) as fits:
            hdu = fits["MANIFEST"]
            n = hdu.get_nrows()
            derive_star = "STAR_KEY" in plain and "STAR_KEY" not in hdu.get_colnames()
            if derive_star:  # a manifest written before star keys: derive them as build does
                plain = [c for c in plain if c != "STAR_KEY"]
                ident = hdu.read(columns=["LABEL_ID", "GAIA_ID", "RA", "DEC", "SPECID"])
            t = hdu.read(columns=plain) if plain else None
            out: dict[str, Any] = {c: t[c] for c in plain} if t is not None else {}
            if derive_star:
                out["STAR_KEY"] = star_keys(ident["LABEL_ID"], ident["GAIA_ID"], ident["RA"],
                                            ident["DEC"], ident["SPECID"])
            survey = hdu.read_column("SURVEY", rows=[0]) if n else np.array([b""])
            out["survey"] = fits_text(survey[0])
            if "FILE" in columns:
                lookup: dict[str, int] = {}
                file_idx = np.empty(n, dtype=np.int32)
                for a in range(0, n, chunk):
                    col = hdu.read_column("FILE", rows=np.arange(a, min(n, a + chunk)))
                    uniq, inv = np.unique(col, return_inverse=True)
                    ids = np.array([lookup.setdefault(fits_text(u), len(lookup))
                                    for u in uniq], dtype=np.int32)
                    file_idx[a:a + col.size] = ids[inv]
                out["files"] = np.array(list(lookup), dtype=object)
                out["file_idx"] = file_idx
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read manifest {path}: {describe(exc)}") from None
    for c in plain:
        if out[c].dtype.kind == "S":
            out[c] = np.char.strip(out[c].astype(str))
    return out
