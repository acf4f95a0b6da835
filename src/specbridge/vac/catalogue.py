"""The value-added catalogue's columns and rows: one row per input DESI spectrum (keyed by
TARGETID, SURVEY and PROGRAM, one PRIMARY row per star), as FITS (fitsio: PARAMS, CANDIDATES,
FIBERMAP; units, EXTNAME, CHECKSUM/DATASUM, provenance) and an HDF5 twin with the same content.
Column definitions live here once and are rendered into docs/datamodel/vac.md; the files are
written by :mod:`specbridge.vac.stream` in the layout of :mod:`specbridge.vac.layout`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import fitsio
import h5py
import numpy as np

from specbridge import __version__, flags
from specbridge import labels as lb
from specbridge.atomic import atomic_output
from specbridge.io.desi import SURVEY_PROGRAM_LEN, survey_program_from_name
from specbridge.io.fitsutil import fits_text
from specbridge.vac.healpix import ang2pix_nest

HPX_NSIDE = 64
DEPENDENCIES = ("numpy", "torch", "peft", "numba", "mpi4py", "h5py", "fitsio", "astropy",
                "snakemake")
#: dtype of the <LABEL>_SOURCE columns: the index of the serving candidate (-1: none)
SOURCE_DTYPE = "i1"
#: width of FLAG_REASON (the reason of the first fatal flags, the file path left out)
REASON_LEN = 64
SP_LEN = SURVEY_PROGRAM_LEN


def params_columns(labels: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(name, numpy dtype, unit, description) of the PARAMS HDU."""
    cols = [("TARGETID", "i8", "", "DESI TARGETID (negative: synthetic ID of an unreadable "
                                   "file, see FLAGS)"),
            ("SURVEY", f"S{SP_LEN}", "", "DESI SURVEY of the observation (main, sv3, ...; "
                                         "'' unknown)"),
            ("PROGRAM", f"S{SP_LEN}", "", "DESI PROGRAM of the observation (bright, dark, "
                                          "backup, ...; '' unknown)"),
            ("PRIMARY", "?", "", "the suggested observation of this TARGETID: no fatal flag "
                                 "first, then highest SNR, then first in the manifest")]
    for lab in labels:
        unit, what, name = lb.unit(lab), lb.description(lab), lb.column(lab)
        cols += [(name, "f4", unit, f"{what}, routed by regime (NaN: no prediction)"),
                 (f"{name}_ERR", "f4", unit, f"predicted 1-sigma uncertainty of {name}"),
                 (f"{name}_SOURCE", SOURCE_DTYPE, "",
                  f"candidate nn (header CANDnn) that served {name}; -1: none")]
    cols += [("REGIME", "i2", "", "0 metal-poor, 1 metal-rich (router's [Fe/H] vs the "
                                  "threshold; see NOT_ROUTED), -1 none"),
             ("FLAGS", "i8", "", "bitmask, docs/datamodel/flags.md (0: no problem; names: "
                                 "specbridge.flags.names)"),
             ("FLAG_REASON", f"S{REASON_LEN}", "", "why a fatal flag was set while reading "
                                                   "('' if none)"),
             ("SNR", "f4", "", "median per-pixel S/N over 4000-5600 A"),
             ("OOD_SCORE", "f4", "", "SpecFormer masked-reconstruction excess error "
                                     "(squared, in units of the SpecFormer's flux_scale, "
                                     "else of each spectrum's std; OOD_SPECTRUM above the "
                                     "threshold in the header; NaN: none)"),
             ("OOD_DISTANCE", "f4", "", "squared Mahalanobis distance over k of the "
                                        "embedding from the training spectra's (about 1 "
                                        "in domain; OOD_SPECTRUM above OODDTHR; NaN: none)")]
    return cols


def candidate_column(candidate: str, label: str) -> str:
    """CANDIDATES column of a candidate's label, e.g. MLP_LORA_TEFF."""
    return f"{candidate.upper()}_{lb.column(label)}"


def candidate_columns(labels: Sequence[str], candidates: Sequence[str]
                      ) -> list[tuple[str, str, str, str]]:
    """(name, dtype, unit, description) of the CANDIDATES HDU."""
    cols = [("TARGETID", "i8", "", "DESI TARGETID")]
    for c in candidates:
        for lab in labels:
            unit, what = lb.unit(lab), lb.description(lab)
            name = candidate_column(c, lab)
            cols += [(name, "f4", unit, f"{what} predicted by {c}"),
                     (f"{name}_ERR", "f4", unit, "its 1-sigma uncertainty")]
    return cols


FIBERMAP_COLUMNS = (
    ("TARGETID", "i8", "", "DESI TARGETID"),
    ("TARGET_RA", "f8", "deg", "right ascension"),
    ("TARGET_DEC", "f8", "deg", "declination"),
    ("HEALPIX", "i8", "", f"HEALPix nested pixel at nside {HPX_NSIDE} (-1: no position)"),
    ("GAIA_ID", "i8", "", "Gaia source ID from the FIBERMAP (-1: none)"),
    ("OBJTYPE", "S8", "", "FIBERMAP OBJTYPE"),
    ("Z", "f8", "", "redrock redshift (NaN: none)"),
    ("ZERR", "f8", "", "its uncertainty"),
    ("ZWARN", "i8", "", "redrock ZWARN (-1: none)"),
    ("SPECTYPE", "S8", "", "redrock SPECTYPE"),
    ("FILE", "S96", "", "input file (name only)"),
    ("ROW", "i4", "", "row in the input file (-1: the file could not be read)"),
)

HDUS = ("PARAMS", "CANDIDATES", "FIBERMAP")


def hdu_columns(labels: Sequence[str], candidates: Sequence[str]
                ) -> dict[str, list[tuple[str, str, str, str]]]:
    """The columns of each table HDU, in HDU order."""
    return {"PARAMS": params_columns(labels),
            "CANDIDATES": candidate_columns(labels, candidates),
            "FIBERMAP": list(FIBERMAP_COLUMNS)}


def primary_mask(targetid: np.ndarray, usable: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """(n,) bool: the PRIMARY observation of every TARGETID >= 0 (exactly one each; negative
    IDs, which are not stars, get none). Among a TARGETID's observations (one per DESI SURVEY
    and PROGRAM), the rule is: a ``usable`` one (no fatal flag) before an unusable one, then
    the highest ``snr`` (NaN lowest), then the earliest row (the sort is stable), as DESI's
    MWS catalogue marks its best-S/N coadd PRIMARY."""
    s = np.asarray(snr, np.float32)
    neg_snr = np.where(np.isfinite(s), -s, np.inf).astype(np.float32)
    order = np.lexsort((neg_snr, ~np.asarray(usable, bool), targetid))
    del neg_snr
    ids = targetid[order]
    first = np.ones(order.size, bool)
    first[1:] = ids[1:] != ids[:-1]
    out = np.zeros(targetid.size, bool)
    out[order[first]] = True
    return out & (targetid >= 0)


def empty_table(columns: Sequence[tuple[str, str, str, str]], n: int) -> np.ndarray:
    """(n,) structured array of ``columns``: floats NaN, everything else 0."""
    t = np.zeros(n, dtype=[(c[0], c[1]) for c in columns])
    for name, dt, _, _ in columns:
        if np.dtype(dt).kind == "f":
            t[name] = np.nan
    return t


#: manifest columns the VAC reads (FILE, 256 bytes a row, is reduced to its name)
MANIFEST_COLUMNS = ("SPECID", "DESI_SURVEY", "DESI_PROGRAM", "RA", "DEC", "GAIA_ID",
                    "OBJTYPE", "Z", "ZERR", "ZWARN", "CLASS", "ROW", "FLAGS", "FLAG_REASON",
                    "FILE")
#: prediction-shard datasets the VAC reads, per row (``candidate_*``: (K, n, L))
PREDICTION_FIELDS = ("specid", "flags", "snr", "value", "error", "regime", "served",
                     "candidate_value", "candidate_error", "ood_score", "ood_distance")


def read_manifest_chunk(hdu: fitsio.hdu.TableHDU, start: int, stop: int,
                        columns: Sequence[str] = MANIFEST_COLUMNS) -> dict[str, np.ndarray]:
    """Manifest ``columns`` of rows [start, stop) as {column: (c,) array}: strings as stripped
    bytes, FILE as the file name (S96); DESI_SURVEY/DESI_PROGRAM from the file name where the
    manifest predates those columns."""
    present = set(hdu.get_colnames())
    want = list(columns)
    legacy = ("DESI_SURVEY" in want or "DESI_PROGRAM" in want) and not (
        {"DESI_SURVEY", "DESI_PROGRAM"} <= present)
    if legacy and "FILE" not in want:
        want.append("FILE")
    data = hdu[[c for c in want if c in present]][start:stop]
    out = {c: data[c] for c in data.dtype.names}
    if "FILE" in out:  # a file's rows are consecutive: each name is derived once per run
        col = out["FILE"]
        starts = np.flatnonzero(np.concatenate([[True], col[1:] != col[:-1]]))
        run = np.zeros(col.size, np.int64)
        run[starts] = 1
        run = np.cumsum(run) - 1  # (c,) index of each row's run
        names = [Path(fits_text(col[i])).name for i in starts]
        out["FILE"] = np.array([n[:96].encode() for n in names] or [b""], "S96")[run]
        if legacy:
            sp = [survey_program_from_name(n) for n in names] or [("", "")]
            out["DESI_SURVEY"] = np.array([a.encode() for a, _ in sp], f"S{SP_LEN}")[run]
            out["DESI_PROGRAM"] = np.array([b.encode() for _, b in sp], f"S{SP_LEN}")[run]
    for c in ("DESI_SURVEY", "DESI_PROGRAM", "OBJTYPE", "CLASS", "FLAG_REASON"):
        if c in out:
            out[c] = np.char.strip(np.asarray(out[c]).astype("S"))
    return out


def chunk_tables(labels: Sequence[str], candidates: Sequence[str], m: dict[str, np.ndarray],
                 pred: dict[str, np.ndarray], seen: np.ndarray, primary: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """The PARAMS, CANDIDATES and FIBERMAP rows of ``c`` manifest rows.

    ``m``: manifest columns (:func:`read_manifest_chunk`); ``pred``: the prediction fields of
    the same rows (``value``, ``error``, ``served``: (c, L); ``candidate_value``,
    ``candidate_error``: (K, c, L); others (c,)), meaningful where ``seen`` (c,) bool is
    true; ``primary``: (c,) bool. A row without a prediction keeps its manifest flags plus
    PREDICTION_FAILED, NaN values and REGIME -1."""
    cols = hdu_columns(labels, candidates)
    c = m["SPECID"].size
    params = empty_table(cols["PARAMS"], c)
    candt = empty_table(cols["CANDIDATES"], c)
    fib = empty_table(cols["FIBERMAP"], c)
    for t in (params, candt, fib):
        t["TARGETID"] = m["SPECID"]
    params["SURVEY"], params["PROGRAM"] = m["DESI_SURVEY"], m["DESI_PROGRAM"]
    params["PRIMARY"] = primary
    params["FLAGS"] = np.where(seen, pred["flags"],
                               m["FLAGS"] | flags.flag("PREDICTION_FAILED"))
    params["REGIME"] = np.where(seen, pred["regime"], -1)
    params["SNR"] = np.where(seen, pred["snr"], np.nan)
    params["OOD_SCORE"] = np.where(seen, pred["ood_score"], np.nan)
    params["OOD_DISTANCE"] = np.where(seen, pred["ood_distance"], np.nan)
    for i, lab in enumerate(labels):
        col = lb.column(lab)
        params[col] = np.where(seen, pred["value"][:, i], np.nan)
        params[f"{col}_ERR"] = np.where(seen, pred["error"][:, i], np.nan)
        params[f"{col}_SOURCE"] = np.where(seen, pred["served"][:, i], -1)
        for k, cand in enumerate(candidates):
            name = candidate_column(cand, lab)
            candt[name] = np.where(seen, pred["candidate_value"][k, :, i], np.nan)
            candt[f"{name}_ERR"] = np.where(seen, pred["candidate_error"][k, :, i], np.nan)
    params["FLAG_REASON"] = m["FLAG_REASON"].astype(f"S{REASON_LEN}")  # cut to the width
    for a, b in (("TARGET_RA", "RA"), ("TARGET_DEC", "DEC"), ("GAIA_ID", "GAIA_ID"),
                 ("OBJTYPE", "OBJTYPE"), ("Z", "Z"), ("ZERR", "ZERR"), ("ZWARN", "ZWARN"),
                 ("SPECTYPE", "CLASS"), ("FILE", "FILE"), ("ROW", "ROW")):
        fib[a] = m[b]
    fib["HEALPIX"] = ang2pix_nest(HPX_NSIDE, fib["TARGET_RA"], fib["TARGET_DEC"])
    return {"PARAMS": params, "CANDIDATES": candt, "FIBERMAP": fib}


def provenance(attrs: dict[str, Any], labels: Sequence[str], candidates: Sequence[str],
               vac_name: str, version: str, config_hash: str) -> list[tuple[str, Any, str]]:
    """(keyword, value, comment) cards of the primary header (and HDF5 root attributes) that
    every file of the catalogue shares; :func:`file_cards` adds each file's own."""
    if len(candidates) > np.iinfo(SOURCE_DTYPE).max:
        raise ValueError(f"{len(candidates)} candidates do not fit the {SOURCE_DTYPE} "
                         "*_SOURCE columns")
    routing = json.loads(attrs["routing"])
    cards = [("VACNAME", vac_name, "value-added catalogue"),
             ("VACVER", version, "catalogue version (in every file name)"),
             ("SBVER", __version__, "specbridge version"),
             ("DATE", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "UTC of writing"),
             ("CONFHASH", config_hash, "hash of the resolved config"),
             ("PREDHASH", str(attrs["settings_hash"]), "hash of the inference settings"),
             ("HPXNSIDE", HPX_NSIDE, "HEALPix nside of the HEALPIX column"),
             ("HPXNEST", True, "HEALPix nested scheme"),
             ("ROUTER", routing["router"], "candidate whose [Fe/H] sets the regime"),
             ("FEHTHR", float(routing["threshold"]),
              f"[{lb.unit('feh')}] regime threshold in [Fe/H]"),
             ("BLEND", str(routing.get("blend", "linear" if routing["blend_width"] else
                                            "hard")), "blend across the regime threshold"),
             ("BLENDW", float(routing["blend_width"]),
              f"[{lb.unit('feh')}] blend width at the threshold (linear blend)"),
             ("RPASSES", int(routing.get("router_passes", 1)), "routing passes"),
             ("ERRCAL", bool(routing.get("calibration")),
              "candidate errors recalibrated on validation")]
    ood = routing.get("ood") or {}
    if ood.get("threshold") is not None:
        cards += [("OODTHR", float(ood["threshold"]), "OOD_SCORE above it: OOD_SPECTRUM"),
                  ("OODPCT", float(ood["percentile"]),
                   "[%] of OODSRC's spectra below the thresholds"),
                  ("OODSRC", str(ood.get("source", "held-out LAMOST")),
                   "spectra the thresholds were calibrated on")]
    if ood.get("distance_threshold") is not None:
        cards += [("OODDTHR", float(ood["distance_threshold"]),
                   "OOD_DISTANCE above it: OOD_SPECTRUM")]
    if ood.get("threshold") is not None:
        cards += [("OODQPCT", float(ood.get("joint_percentile", ood["percentile"])),
                   "[%] OODTHR, OODDTHR: percentile of OODSRC's")]
    if ood:
        cards += [("OODZMAX", float(ood["z_max"]), "OOD_LABELS: candidates disagree beyond")]
    for k, dep in enumerate(DEPENDENCIES):
        try:
            ver = metadata.version(dep)
        except metadata.PackageNotFoundError:
            ver = "absent"
        cards += [(f"DEPNAM{k:02d}", dep, ""), (f"DEPVER{k:02d}", ver, "")]
    cards += candidate_cards(candidates, json.loads(attrs["checkpoints"]))
    sel = dict((tuple(k), v) for k, v in routing["selection"])
    for i, lab in enumerate(labels):
        cards += [(f"LABEL{i}", lab, "label"),
                  (f"SEL{i}P", sel.get((lab, "metal_poor"), ""), f"serves {lab}, metal-poor"),
                  (f"SEL{i}R", sel.get((lab, "metal_rich"), ""), f"serves {lab}, metal-rich")]
    return cards


def candidate_cards(candidates: Sequence[str], digests: dict[str, str] | None = None
                    ) -> list[tuple[str, Any, str]]:
    """The table of candidates that the *_SOURCE indices point into: CANDnn (and, with
    ``digests``, CKSHnn, the checkpoint's SHA-256[:40])."""
    cards: list[tuple[str, Any, str]] = []
    for k, c in enumerate(candidates):
        cards.append((f"CAND{k:02d}", c, f"candidate {k} (*_SOURCE = {k})"))
        if digests is not None:
            cards.append((f"CKSH{k:02d}", digests.get(c, "")[:40], "checkpoint SHA-256[:40]"))
    return cards


def file_cards(cards: list[tuple[str, Any, str]], nspec: int,
               extra: Sequence[tuple[str, Any, str]] = ()) -> list[tuple[str, Any, str]]:
    """``cards`` with this file's NSPEC (rows) and ``extra`` cards (SURVEY, HPXPIXEL, ...)."""
    return [*cards, ("NSPEC", int(nspec), "rows = input spectra in this file"), *extra]


def _fit_comment(value: Any, comment: str) -> str:
    """The comment cut so that the card fits in 80 characters (no CONTINUE cards)."""
    width = len(str(value)) + 2 if isinstance(value, str) else 20
    return comment[:max(0, 80 - 10 - max(width, 20) - 3)]


def header_records(cards: Sequence[tuple[str, Any, str]]) -> list[dict[str, Any]]:
    """fitsio header records of ``cards``, comments cut to fit one card."""
    return [{"name": k, "value": v, "comment": _fit_comment(v, c)} for k, v, c in cards]


def write_cards(hdu: Any, cards: Sequence[tuple[str, Any, str]]) -> None:
    """Append ``cards`` (new keywords) to an HDU's header. fitsio's write_keys updates one
    keyword at a time, each a search of the header (quadratic in the cards; the cost of a
    small per-HEALPix file); cfitsio's record append is used where fitsio exposes it."""
    records = header_records(cards)
    append = getattr(getattr(hdu, "_FITS", None), "write_record", None)
    if append is None:
        hdu.write_keys(records)
        return
    for card in str(fitsio.FITSHDR(records)).strip("\n").split("\n"):
        append(hdu._ext + 1, card)


def table_header(name: str, columns: Sequence[tuple[str, str, str, str]], nrows: int,
                 candidates: Sequence[str]) -> list[tuple[str, Any, str]]:
    """Extension cards of a table HDU: NSPEC, TCOMMn (descriptions) and, in PARAMS, the
    candidate table (CANDnn) that the *_SOURCE columns index."""
    cards: list[tuple[str, Any, str]] = [("NSPEC", int(nrows), "rows")]
    cards += [(f"TCOMM{k}", c[3].replace("'", "")[:60], "") for k, c in
              enumerate(columns, start=1)]
    if name == "PARAMS":
        cards += candidate_cards(candidates)
    return cards


def write_fits(path: str | Path, tables: dict[str, np.ndarray],
               columns: dict[str, list[tuple[str, str, str, str]]],
               cards: list[tuple[str, Any, str]], candidates: Sequence[str],
               atomic: bool = True) -> None:
    """One FITS file: an empty primary HDU with ``cards``, then the table HDUs of ``tables``
    (PARAMS, CANDIDATES, FIBERMAP, row-matched) with TUNITn and TCOMMn, and CHECKSUM/DATASUM
    on every HDU. For a few rows: it holds them all in memory. ``atomic``: written under a
    temporary name, fsynced and renamed; without, for files inside a directory that is itself
    renamed into place when complete."""
    def write(target: Path) -> None:
        with fitsio.FITS(str(target), "rw", clobber=True) as f:
            f.write(None)  # fitsio drops a header given with no data: write the keys after
            write_cards(f[0], [("EXTNAME", "PRIMARY", "provenance of the catalogue"), *cards])
            for name in HDUS:
                cols = columns[name]
                f.write(tables[name], extname=name, units=[c[2] for c in cols])
                write_cards(f[-1], table_header(name, cols, tables[name].size, candidates))
            for hdu in f:
                hdu.write_checksum()

    if atomic:
        with atomic_output(path) as tmp:
            write(tmp)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write(Path(path))


def read_fits_tables(path: str | Path) -> dict[str, np.ndarray]:
    """PARAMS, CANDIDATES, FIBERMAP of a VAC FITS file."""
    return {name: fitsio.read(str(path), ext=name) for name in ("PARAMS", "CANDIDATES",
                                                                  "FIBERMAP")}


def candidate_names(path: str | Path) -> list[str]:
    """The candidates of a VAC FITS file in ``*_SOURCE`` index order (PARAMS header CANDnn):
    ``candidate_names(path)[k]`` served the values whose ``*_SOURCE`` is ``k``."""
    hdr = fitsio.read_header(str(path), "PARAMS")
    out, k = [], 0
    while f"CAND{k:02d}" in hdr:
        out.append(str(hdr[f"CAND{k:02d}"]).strip())
        k += 1
    return out


def read_hdf5_tables(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """PARAMS, CANDIDATES, FIBERMAP of the HDF5 twin, each {column: array}."""
    with h5py.File(path, "r") as h:
        return {g: {c: h[g][c][()] for c in h[g]} for g in ("PARAMS", "CANDIDATES",
                                                             "FIBERMAP")}


def datamodel_markdown(labels: Sequence[str], candidates: Sequence[str]) -> str:
    """The column tables of docs/datamodel/vac.md."""
    out = []
    for name, cols in (("PARAMS", params_columns(labels)),
                       ("CANDIDATES", candidate_columns(labels, candidates[:1])),
                       ("FIBERMAP", FIBERMAP_COLUMNS)):
        out += [f"### HDU {name}", "", "| column | type | unit | description |",
                "|---|---|---|---|"]
        out += [f"| {c} | {t} | {u} | {re.sub(r'[|]', '/', d)} |" for c, t, u, d in cols]
        out.append("")
    return "\n".join(out)
