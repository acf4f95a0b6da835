"""The real-data scoreboard: for every real labelled LAMOST set (the tables of
``validate_real``), label, S/N bin and regime, the bias and robust sigma of the predictions
against the set's reference labels, each with a bootstrap interval over stars, and the share of
labelled spectra that got a prediction. One table per run (ECSV) and its markdown rendering, so
that runs can be compared number by number (docs/datamodel/scoreboard.md)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.errors import UserError, describe
from specbridge.stages import declared

CONFIG_SECTIONS = ("evaluation",)
log = logging.getLogger("specbridge.scoreboard")

MIN_N = 5          # cells with fewer labelled and predicted spectra keep n, NaN statistics
N_BOOT = 1000
LEVEL = 0.68
SEED = 0
REGIMES = ("all", "metal_poor", "metal_rich")

# name, dtype, unit ("label": the row's label unit), description
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("set", "U32", "", "real_validation set (its table's meta 'set')"),
    ("label", "U16", "", "label name (teff, logg, feh, alpha_fe)"),
    ("unit", "U8", "", "unit of the label and of bias, robust_sigma and their intervals"),
    ("snr_bin", "U24", "", "'all' or the [lo, hi) S/N bin of evaluation.snr_bins"),
    ("regime", "U16", "", "'all', or metal_poor / metal_rich by the reference [Fe/H] against "
                          "evaluation.feh_threshold (metal_poor: [Fe/H] <= threshold)"),
    ("n_spectra", "i8", "", "spectra in the cell (S/N bin, regime)"),
    ("n_labelled", "i8", "", "of those, spectra with a finite reference value of the label"),
    ("n", "i8", "", "of those, spectra with a finite prediction too: the residuals used"),
    ("n_stars", "i8", "", "distinct stars among the n (the bootstrap's resampling units)"),
    ("pred_fraction", "f8", "", "n / n_labelled: share of labelled spectra with a prediction"),
    ("bias", "f8", "label", "median residual (prediction - reference); NaN when n < 5"),
    ("bias_lo", "f8", "label", "lower end of the bootstrap interval of bias"),
    ("bias_hi", "f8", "label", "upper end of the bootstrap interval of bias"),
    ("robust_sigma", "f8", "label", "Tukey-biweight (c = 6) scale of the residuals about their "
                                    "median; NaN when n < 5"),
    ("robust_sigma_lo", "f8", "label", "lower end of the bootstrap interval of robust_sigma"),
    ("robust_sigma_hi", "f8", "label", "upper end of the bootstrap interval of robust_sigma"),
)
COLUMN_NAMES = tuple(c[0] for c in COLUMNS)
STAR_ID = ("LABEL_ID where the table has it, else SPECID (LAMOST OBSID) where >= 0, else FILE")


def star_ids(t: Any) -> np.ndarray:
    """(n,) star identifier of each row of a real-set table, the bootstrap's resampling unit:
    the reference catalogue's LABEL_ID where the table has a non-empty one, else SPECID where
    it is a real ID (>= 0; synthetic IDs are negative), else FILE."""
    n = len(t)
    ids = np.array([f"F:{f}" for f in t["FILE"]], dtype=object) if "FILE" in t.colnames \
        else np.array([f"R:{i}" for i in range(n)], dtype=object)
    if "SPECID" in t.colnames:
        spec = np.asarray(t["SPECID"])
        real = np.array([_valid_specid(v) for v in spec], bool)
        ids[real] = [f"S:{int(v)}" for v in spec[real]]
    if "LABEL_ID" in t.colnames:
        lab = np.array([str(v).strip() for v in np.asarray(t["LABEL_ID"])], dtype=object)
        has = (lab != "") & (lab != "--") & (lab != "-1")
        ids[has] = [f"L:{v}" for v in lab[has]]
    return ids.astype(str)


def _valid_specid(v: Any) -> bool:
    try:
        return int(v) >= 0
    except (TypeError, ValueError):
        return False


def _float(t: Any, col: str) -> np.ndarray:
    """Column ``col`` as float64 with masked entries NaN; all NaN when absent."""
    if col not in t.colnames:
        return np.full(len(t), np.nan)
    c = t[col]
    if hasattr(c, "filled"):
        c = c.filled(np.nan)
    return np.asarray(c, dtype=np.float64)


def set_rows(name: str, t: Any, snr_edges: Sequence[float], threshold: float, *,
             n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> list[dict]:
    """Scoreboard rows of one real-set table ``t`` (columns of validate_real): for every label
    with reference and prediction columns, S/N bin ('all' first) and regime ('all' first)."""
    from specbridge.evaluation.bootstrap import bootstrap_interval
    from specbridge.evaluation.tables import snr_bin_names
    from specbridge.inference.routing import METAL_POOR, METAL_RICH, regime_of
    from specbridge.labels import LABEL_NAMES, column, unit

    n = len(t)
    ids = star_ids(t)
    snr = _float(t, "SNR")
    regime = regime_of(_float(t, "FEH_REF"), threshold)
    regimes = {"all": np.ones(n, bool), "metal_poor": regime == METAL_POOR,
               "metal_rich": regime == METAL_RICH}
    bins = {"all": np.ones(n, bool)}
    for nm, lo, hi in zip(snr_bin_names(snr_edges), snr_edges[:-1], snr_edges[1:],
                          strict=True):
        bins[nm] = (snr >= lo) & (snr < hi)
    labels = [lab for lab in LABEL_NAMES
              if {f"{column(lab)}_REF", f"{column(lab)}_PRED"} <= set(t.colnames)]
    rows = []
    for lab in labels:
        ref, pred = _float(t, f"{column(lab)}_REF"), _float(t, f"{column(lab)}_PRED")
        resid = pred - ref
        for bn, bmask in bins.items():
            for rg in REGIMES:
                cell = bmask & regimes[rg]
                labelled = cell & np.isfinite(ref)
                used = labelled & np.isfinite(pred)
                k, n_lab = int(used.sum()), int(labelled.sum())
                row = {"set": name, "label": lab, "unit": unit(lab), "snr_bin": bn,
                       "regime": rg, "n_spectra": int(cell.sum()), "n_labelled": n_lab,
                       "n": k, "n_stars": int(np.unique(ids[used]).size),
                       "pred_fraction": k / n_lab if n_lab else np.nan}
                for stat in ("bias", "robust_sigma"):
                    if k >= MIN_N:
                        est, lo, hi = bootstrap_interval(stat, resid[used], groups=ids[used],
                                                         n_boot=n_boot, level=level, seed=seed)
                    else:
                        est = lo = hi = np.nan
                    row.update({stat: est, f"{stat}_lo": lo, f"{stat}_hi": hi})
                rows.append(row)
    return rows


def scoreboard_table(rows: list[dict], meta: dict[str, Any] | None = None) -> Any:
    """The scoreboard as an astropy Table (columns :data:`COLUMNS`, also with no row)."""
    from astropy.table import Table

    t = Table(rows=[[r[c] for c in COLUMN_NAMES] for r in rows] or None,
              names=COLUMN_NAMES, dtype=[c[1] for c in COLUMNS])
    for name, _, _, desc in COLUMNS:
        t[name].description = desc
    t.meta.update(meta or {})
    return t


def read_real_table(path: str | Path) -> tuple[str, Any]:
    """(set name, table) of one validate_real table; UserError naming the file otherwise."""
    from astropy.table import Table

    try:
        t = Table.read(path, format="ascii.ecsv")
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read the real-set table: {describe(exc)}") from None
    if "FILE" not in t.colnames and "SPECID" not in t.colnames:
        raise UserError(f"{path}: neither FILE nor SPECID column: not a validate_real table")
    return str(t.meta.get("set") or Path(path).stem), t


def _fmt(v: Any) -> str:
    from specbridge.evaluation.tables import _fmt as fmt

    return fmt(v)


def _with_interval(v: float, lo: float, hi: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def display_tables(t: Any) -> tuple[Any, Any]:
    """Two tables of strings for reading: the 'all' S/N, 'all' regime row of every set and
    label; then the other cells with any labelled spectrum."""
    from astropy.table import Table

    lvl = f"{100 * float(t.meta.get('level', LEVEL)):g} %"

    def row(r, detail):
        first = [str(r["set"]), str(r["label"]), str(r["unit"])]
        cell = [str(r["snr_bin"]), str(r["regime"])] if detail else []
        frac = (f"{int(r['n'])}/{int(r['n_labelled'])}" if r["n_labelled"] else "0/0")
        return first + cell + [str(int(r["n"])), str(int(r["n_stars"])), frac,
                               _with_interval(r["bias"], r["bias_lo"], r["bias_hi"]),
                               _with_interval(r["robust_sigma"], r["robust_sigma_lo"],
                                              r["robust_sigma_hi"])]

    tail = ["n", "stars", "with prediction", f"bias [{lvl}]", f"robust sigma [{lvl}]"]
    top = [r for r in t if r["snr_bin"] == "all" and r["regime"] == "all"]
    rest = [r for r in t if not (r["snr_bin"] == "all" and r["regime"] == "all")
            and r["n_labelled"] > 0]
    names = ["set", "label", "unit", *tail]
    dnames = ["set", "label", "unit", "snr_bin", "regime", *tail]
    return (Table(rows=[row(r, False) for r in top] or None, names=names,
                  dtype=["U64"] * len(names)),
            Table(rows=[row(r, True) for r in rest] or None, names=dnames,
                  dtype=["U64"] * len(dnames)))


def intro(t: Any) -> str:
    """One paragraph saying what the numbers are."""
    m = t.meta
    return (f"Real labelled LAMOST spectra predicted by the pretrained spectrum MLP of this run, "
            f"against each set's own reference labels. bias: median of prediction - "
            f"reference; robust sigma: Tukey biweight (c = 6) about the median; in brackets "
            f"the {100 * float(m.get('level', LEVEL)):g} % bootstrap interval over stars "
            f"({m.get('n_boot', N_BOOT)} resamplings; a star: {m.get('star_id', STAR_ID)}). "
            f"Regimes split at reference [Fe/H] = {m.get('feh_threshold', '?')}; cells with "
            f"fewer than {m.get('min_n', MIN_N)} spectra show n only.")


def scoreboard_markdown(t: Any) -> str:
    """The scoreboard as markdown: the whole-set rows first, then by S/N bin and regime."""
    from specbridge.evaluation.tables import markdown

    out = ["# Real labelled spectra: scoreboard", "", intro(t), ""]
    if not len(t):
        out += ["No real labelled set was found on this machine (config real_validation).",
                ""]
        return "\n".join(out)
    top, rest = display_tables(t)
    out += ["## Whole sets (all S/N, all regimes)", "", markdown(top), ""]
    ood = ood_markdown(t.meta.get("sets", []))
    if ood:
        out += ["## Out-of-domain flags", "", ood, ""]
    few = few_label_markdown(t.meta.get("few_label", []))
    if few:
        out += ["## Calibration on a few real labels", "", few, ""]
    if len(rest):
        out += ["## By S/N bin and regime", "", markdown(rest), ""]
    return "\n".join(out)


def ood_markdown(sets: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the out-of-domain flags per real set (its table's meta 'ood'), or ''
    when no set carries them."""
    rows = []
    for s in sets:
        o = s.get("ood")
        if not o or not o.get("n"):
            continue
        below = (f"{o['n_below_teff_flagged']} of {o['n_below_teff']}"
                 if o.get("n_below_teff") else "-")
        rows.append(f"| {s['name']} | {o['n']} | {o['n_spectrum']} | {o['n_labels']} | "
                    f"{o['n_flagged']} ({100 * o['n_flagged'] / o['n']:.0f} %) | {below} |")
    if not rows:
        return ""
    head = ("Spectra flagged OOD_SPECTRUM (SpecFormer reconstruction score above its "
            "threshold) or OOD_LABELS (prediction outside the training labels' range); last "
            "column: stars whose reference Teff is below the training range.\n\n"
            "| set | predicted | OOD_SPECTRUM | OOD_LABELS | either | reference Teff below "
            "range: flagged |\n|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def few_label_rows(name: str, t: Any, seed: int = SEED) -> list[dict[str, Any]]:
    """Rows of :mod:`specbridge.evaluation.few_label` for one real-set table ``t``: every
    label with reference and prediction columns, the set's stars as units."""
    from specbridge.evaluation import few_label
    from specbridge.labels import LABEL_NAMES, column, unit

    resid = {lab: (_float(t, f"{column(lab)}_PRED") - _float(t, f"{column(lab)}_REF"),
                   unit(lab))
             for lab in LABEL_NAMES
             if {f"{column(lab)}_REF", f"{column(lab)}_PRED"} <= set(t.colnames)}
    return few_label.set_rows(name, resid, star_ids(t), seed=seed)


FEW_LABEL_INTRO = ("The offset of the pretrained MLP on each real set, taken as the median "
                   "residual of n_cal stars drawn at random and subtracted from the other stars' "
                   "predictions: the held-out bias (median over the draws, in brackets the "
                   "16th-84th percentiles), the typical |bias| left and the held-out robust "
                   "sigma, against the uncalibrated bias and sigma of the whole set.")


def few_label_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Astropy Table of strings of the few-label calibration rows, for reading."""
    from astropy.table import Table

    names = ["set", "label", "unit", "stars", "bias before", "sigma before", "n_cal",
             "bias after [16-84 %]", "|bias| after", "sigma after"]
    body = [[str(r["set"]), str(r["label"]), str(r["unit"]), str(r["n_stars"]),
             _fmt(r["bias_before"]), _fmt(r["sigma_before"]), str(r["n_cal"]),
             f"{_fmt(r['bias_after'])} [{_fmt(r['bias_after_lo'])}, "
             f"{_fmt(r['bias_after_hi'])}]", _fmt(r["abs_bias_after"]),
             _fmt(r["sigma_after"])] for r in rows]
    return Table(rows=body or None, names=names, dtype=["U64"] * len(names))


def few_label_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of the few-label calibration rows ('' without rows)."""
    from specbridge.evaluation.tables import markdown

    if not rows:
        return ""
    return (f"{FEW_LABEL_INTRO} {rows[0]['n_draw']} draws.\n\n"
            + markdown(few_label_table(rows)))


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, n_boot: int = N_BOOT, level: float = LEVEL,
        seed: int = SEED) -> int:
    """The scoreboard of the real-set tables ``inputs['real']`` (list of validate_real ECSV
    tables, may be empty): the table ``outputs['table']`` (ECSV) and its markdown
    ``outputs['markdown']`` (if given)."""
    from specbridge import __version__

    cfg = declared(cfg, CONFIG_SECTIONS)
    ev = cfg["evaluation"]
    edges = [float(e) for e in ev["snr_bins"]]
    threshold = float(ev["feh_threshold"])
    rows, sets, few = [], [], []
    for path in inputs.get("real") or []:
        name, t = read_real_table(path)
        rows += set_rows(name, t, edges, threshold, n_boot=n_boot, level=level, seed=seed)
        few += few_label_rows(name, t, seed)
        sets.append({"name": name, "table": str(path), "n_spectra": len(t),
                     "reference": str(t.meta.get("reference", "")),
                     "model": str(t.meta.get("model", "")), "ood": t.meta.get("ood")})
    meta = {"title": "real labelled spectra: scoreboard", "level": level, "n_boot": n_boot,
            "seed": seed, "min_n": MIN_N, "feh_threshold": threshold, "snr_bins": edges,
            "star_id": STAR_ID, "sets": sets, "few_label": few,
            "specbridge_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    table = scoreboard_table(rows, meta)
    for r in table:
        if r["snr_bin"] == "all" and r["regime"] == "all":
            log.info("%s %-8s n %3d of %3d labelled: bias %s, robust sigma %s %s", r["set"],
                     r["label"], r["n"], r["n_labelled"],
                     _with_interval(r["bias"], r["bias_lo"], r["bias_hi"]),
                     _with_interval(r["robust_sigma"], r["robust_sigma_lo"],
                                    r["robust_sigma_hi"]), r["unit"])
    with atomic_output(outputs["table"]) as tmp:
        table.write(tmp, format="ascii.ecsv")
    if outputs.get("markdown"):
        with atomic_output(outputs["markdown"]) as tmp:
            Path(tmp).write_text(scoreboard_markdown(table))
    log.info("wrote %s (%d rows, %d sets)", outputs["table"], len(table), len(sets))
    return 0
