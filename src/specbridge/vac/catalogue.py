"""The value-added catalogue: one row per input DESI spectrum (manifest order, keyed by
TARGETID), as FITS (fitsio: PARAMS, CANDIDATES, FIBERMAP; units, EXTNAME, CHECKSUM/DATASUM,
provenance) and an HDF5 twin with the same content. Column definitions live here once and
are rendered into docs/datamodel/vac.md."""

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
from specbridge.io.fitsutil import fits_text
from specbridge.io.shards import read_index, read_shard
from specbridge.vac.healpix import ang2pix_nest

HPX_NSIDE = 64
DEPENDENCIES = ("numpy", "torch", "peft", "numba", "mpi4py", "h5py", "fitsio", "astropy",
                "snakemake")
SOURCE_LEN = 24


def params_columns(labels: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(name, numpy dtype, unit, description) of the PARAMS HDU."""
    cols = [("TARGETID", "i8", "", "DESI TARGETID (negative: synthetic ID of an unreadable "
                                   "file, see FLAGS)")]
    for lab in labels:
        unit, what, name = lb.unit(lab), lb.description(lab), lb.column(lab)
        cols += [(name, "f4", unit, f"{what}, routed by regime (NaN: no prediction)"),
                 (f"{name}_ERR", "f4", unit, f"predicted 1-sigma uncertainty of {name}"),
                 (f"{name}_SOURCE", f"S{SOURCE_LEN}", "",
                  f"candidate (model_strategy) that served {name}")]
    cols += [("REGIME", "i2", "", "0 metal-poor, 1 metal-rich (router's [Fe/H] vs the "
                                  "threshold; see NOT_ROUTED), -1 none"),
             ("FLAGS", "i8", "", "bitmask, docs/datamodel/flags.md (0: no problem)"),
             ("FLAG_NAMES", "S96", "", "names of the bits set in FLAGS"),
             ("FLAG_REASON", "S128", "", "why a fatal flag was set while reading"),
             ("SNR", "f4", "", "median per-pixel S/N over 4000-5600 A"),
             ("OOD_SCORE", "f4", "", "SpecFormer masked-reconstruction excess error "
                                     "(standardised flux units; OOD_SPECTRUM above the "
                                     "threshold in the header; NaN: none)")]
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


def _table(columns, n: int) -> np.ndarray:
    t = np.zeros(n, dtype=[(c[0], c[1]) for c in columns])
    for name, dt, _, _ in columns:
        if np.dtype(dt).kind == "f":
            t[name] = np.nan
    return t


def _read_manifest(path: str | Path, chunk: int = 200_000) -> dict[str, np.ndarray]:
    cols = ["SPECID", "RA", "DEC", "GAIA_ID", "OBJTYPE", "Z", "ZERR", "ZWARN", "CLASS", "ROW",
            "FLAGS", "FLAG_REASON"]
    with fitsio.FITS(str(path)) as f:
        hdu = f["MANIFEST"]
        n = hdu.get_nrows()
        data = hdu.read(columns=cols)
        files = np.empty(n, "S96")
        for a in range(0, n, chunk):  # the 256-byte FILE column, a chunk at a time
            col = hdu.read_column("FILE", rows=np.arange(a, min(n, a + chunk)))
            files[a:a + chunk] = [Path(fits_text(v)).name[:96].encode() for v in col]
    out = {c: data[c] for c in cols}
    out["FILE"] = files
    return out


def build_catalogue(predictions: str | Path, manifest: str | Path) -> dict[str, Any]:
    """Tables (PARAMS, CANDIDATES, FIBERMAP: structured arrays, one row per manifest row) and
    the provenance of the predictions (labels, candidates, routing, checkpoint digests)."""
    with h5py.File(predictions, "r") as h:
        attrs = dict(h.attrs)
    labels = json.loads(attrs["labels"])
    cands = json.loads(attrs["candidates"])
    m = _read_manifest(manifest)
    n = m["SPECID"].size
    params = _table(params_columns(labels), n)
    candt = _table(candidate_columns(labels, cands), n)
    fib = _table(FIBERMAP_COLUMNS, n)
    seen = np.zeros(n, bool)
    names = np.array([c.encode() for c in cands] + [b""], f"S{SOURCE_LEN}")  # -1 -> b""
    for s in read_index(predictions):
        d = read_shard(s["path"], ("manifest_row", "specid", "flags", "snr", "value", "error",
                                   "regime", "served", "candidate_value", "candidate_error"))
        with h5py.File(s["path"], "r") as h:  # shards written before OOD scores have none
            d["ood_score"] = h["ood_score"][()] if "ood_score" in h else np.nan
        r = d["manifest_row"]
        if r.size and (r.min() < 0 or r.max() >= n):
            raise ValueError(f"{s['path']}: manifest rows outside {manifest}")
        if (d["specid"] != m["SPECID"][r]).any():
            raise ValueError(f"{s['path']}: IDs differ from {manifest}: wrong manifest?")
        seen[r] = True
        params["FLAGS"][r] = d["flags"]
        params["SNR"][r] = d["snr"]
        params["OOD_SCORE"][r] = d["ood_score"]
        params["REGIME"][r] = d["regime"]
        for i, lab in enumerate(labels):
            col = lb.column(lab)
            params[col][r] = d["value"][:, i]
            params[f"{col}_ERR"][r] = d["error"][:, i]
            params[f"{col}_SOURCE"][r] = names[d["served"][:, i]]
            for k, c in enumerate(cands):
                candt[candidate_column(c, lab)][r] = d["candidate_value"][k, :, i]
                candt[f"{candidate_column(c, lab)}_ERR"][r] = d["candidate_error"][k, :, i]
    missing = ~seen
    params["FLAGS"][missing] = m["FLAGS"][missing] | flags.flag("PREDICTION_FAILED")
    params["REGIME"][missing] = -1
    params["SNR"][missing] = np.nan
    for t in (params, candt, fib):
        t["TARGETID"] = m["SPECID"]
    params["FLAG_REASON"] = [fits_text(v)[:128].encode() for v in m["FLAG_REASON"]]
    values, inverse = np.unique(params["FLAGS"], return_inverse=True)
    decoded = np.array([",".join(flags.names(int(v)))[:96].encode() for v in values], "S96")
    params["FLAG_NAMES"] = decoded[inverse.ravel()]
    for a, b in (("TARGET_RA", "RA"), ("TARGET_DEC", "DEC"), ("GAIA_ID", "GAIA_ID"),
                 ("OBJTYPE", "OBJTYPE"), ("Z", "Z"), ("ZERR", "ZERR"), ("ZWARN", "ZWARN"),
                 ("SPECTYPE", "CLASS"), ("FILE", "FILE"), ("ROW", "ROW")):
        fib[a] = np.char.encode(np.char.strip(m[b].astype(str))) if m[b].dtype.kind in "SU" \
            else m[b]
    fib["HEALPIX"] = ang2pix_nest(HPX_NSIDE, fib["TARGET_RA"], fib["TARGET_DEC"])
    return {"PARAMS": params, "CANDIDATES": candt, "FIBERMAP": fib, "labels": labels,
            "candidates": cands, "attrs": attrs, "n_missing": int(missing.sum())}


def provenance(cat: dict[str, Any], vac_name: str, config_hash: str
               ) -> list[tuple[str, Any, str]]:
    """(keyword, value, comment) cards of the primary header (and HDF5 root attributes)."""
    attrs = cat["attrs"]
    routing = json.loads(attrs["routing"])
    cards = [("VACNAME", vac_name, "value-added catalogue"),
             ("SBVER", __version__, "specbridge version"),
             ("DATE", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "UTC of writing"),
             ("CONFHASH", config_hash, "hash of the resolved config"),
             ("PREDHASH", str(attrs["settings_hash"]), "hash of the inference settings"),
             ("NSPEC", int(cat["PARAMS"].size), "rows = input spectra"),
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
                   "[%] OODTHR: this percentile of held-out LAMOST")]
    if ood:
        cards += [("OODZMAX", float(ood["z_max"]), "OOD_LABELS: candidates disagree beyond")]
    for k, dep in enumerate(DEPENDENCIES):
        try:
            ver = metadata.version(dep)
        except metadata.PackageNotFoundError:
            ver = "absent"
        cards += [(f"DEPNAM{k:02d}", dep, ""), (f"DEPVER{k:02d}", ver, "")]
    digests = json.loads(attrs["checkpoints"])
    for k, c in enumerate(cat["candidates"]):
        cards += [(f"CAND{k:02d}", c, "candidate"),
                  (f"CKSH{k:02d}", digests.get(c, "")[:40], "checkpoint SHA-256[:40]")]
    sel = dict((tuple(k), v) for k, v in routing["selection"])
    for i, lab in enumerate(cat["labels"]):
        cards += [(f"LABEL{i}", lab, "label"),
                  (f"SEL{i}P", sel.get((lab, "metal_poor"), ""), f"serves {lab}, metal-poor"),
                  (f"SEL{i}R", sel.get((lab, "metal_rich"), ""), f"serves {lab}, metal-rich")]
    return cards


def _hdu_list(cat: dict[str, Any], rows: np.ndarray | None = None):
    labels, cands = cat["labels"], cat["candidates"]
    for name, cols in (("PARAMS", params_columns(labels)),
                       ("CANDIDATES", candidate_columns(labels, cands)),
                       ("FIBERMAP", FIBERMAP_COLUMNS)):
        data = cat[name] if rows is None else cat[name][rows]
        yield name, data, cols


def _fit_comment(value: Any, comment: str) -> str:
    """The comment cut so that the card fits in 80 characters (no CONTINUE cards)."""
    width = len(str(value)) + 2 if isinstance(value, str) else 20
    return comment[:max(0, 80 - 10 - max(width, 20) - 3)]


def write_fits(path: str | Path, cat: dict[str, Any], cards: list[tuple[str, Any, str]],
               rows: np.ndarray | None = None) -> None:
    """The FITS file (all rows, or ``rows``) atomically: empty primary with provenance, then
    PARAMS, CANDIDATES, FIBERMAP with TUNITn, and CHECKSUM/DATASUM on every HDU."""
    with atomic_output(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            hdr = [{"name": k, "value": v, "comment": _fit_comment(v, c)} for k, v, c in cards]
            f.write(None)  # fitsio drops a header given with no data: write the keys after
            f[0].write_key("EXTNAME", "PRIMARY", "provenance of the catalogue")
            f[0].write_keys(hdr)
            for name, data, cols in _hdu_list(cat, rows):
                f.write(data, extname=name, units=[c[2] for c in cols],
                        header=[{"name": "NSPEC", "value": int(data.size),
                                 "comment": "rows"}])
                for k, c in enumerate(cols, start=1):
                    f[-1].write_key(f"TCOMM{k}", c[3].replace("'", "")[:60])
            for hdu in f:
                hdu.write_checksum()


def write_hdf5(path: str | Path, cat: dict[str, Any], cards: list[tuple[str, Any, str]]
               ) -> None:
    """The HDF5 twin: groups PARAMS, CANDIDATES, FIBERMAP, one dataset per column with
    'unit' and 'description' attributes; the provenance cards as root attributes."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as h:
        for k, v, _ in cards:
            h.attrs[k] = v
        for name, data, cols in _hdu_list(cat):
            g = h.create_group(name)
            for cname, _, unit, desc in cols:
                ds = g.create_dataset(cname, data=data[cname], compression="gzip",
                                      compression_opts=1, shuffle=True)
                ds.attrs["unit"] = unit
                ds.attrs["description"] = desc


def healpix_file(directory: str | Path, vac_name: str, pixel: int) -> Path:
    """Per-healpix file name (pixel -1: spectra without a position)."""
    tag = f"hpx{pixel}" if pixel >= 0 else "nopix"
    return Path(directory) / f"{vac_name}-{tag}.fits"


def write_healpix_files(directory: str | Path, cat: dict[str, Any],
                        cards: list[tuple[str, Any, str]], vac_name: str) -> list[Path]:
    """One FITS file per HEALPix pixel (nside 64, nested), rows in manifest order."""
    pix = cat["FIBERMAP"]["HEALPIX"]
    order = np.argsort(pix, kind="stable")
    bounds = np.flatnonzero(np.diff(pix[order])) + 1
    written = []
    for rows in np.split(order, bounds):
        if rows.size == 0:
            continue
        p = int(pix[rows[0]])
        path = healpix_file(directory, vac_name, p)
        write_fits(path, cat, [*cards, ("HPXPIXEL", p, "HEALPix pixel of this file")], rows)
        written.append(path)
    return written


def read_fits_tables(path: str | Path) -> dict[str, np.ndarray]:
    """PARAMS, CANDIDATES, FIBERMAP of a VAC FITS file."""
    return {name: fitsio.read(str(path), ext=name) for name in ("PARAMS", "CANDIDATES",
                                                                  "FIBERMAP")}


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
