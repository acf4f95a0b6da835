"""``specbridge report``: one HTML page with the evaluation's answers, the selection, per-regime
tables and figures (one-to-one, residuals vs [Fe/H], per-regime scatter) and the VAC's
overview; the figures are separate PNG files, also gathered by ``snakemake --report``."""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.cli._common import CLIError, add_config_argument, config_from_args

log = logging.getLogger("specbridge.report")

FIGURES = ("one_to_one.png", "residual_vs_feh.png", "regime_sigma.png", "vac_overview.png")


def table_html(table, columns=None) -> str:
    """An HTML table of ``columns`` of an astropy Table (numbers formatted for reading)."""
    from specbridge.evaluation.tables import _fmt

    cols = list(columns or table.colnames)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols)
                   + "</tr>" for r in table)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def real_sections(tables: list[str], report_dir: Path) -> list[str]:
    """HTML of the real labelled LAMOST sets: summary per label and the one-to-one figure."""
    import os

    from astropy.table import Table

    if not tables:
        return []
    parts = ["<h2>Real labelled LAMOST spectra (pretrained spectrum MLP)</h2>",
             "<p>Read, cross-matched and preprocessed like the survey; predicted by the "
             "LAMOST-pretrained spectrum MLP of this run. Reference labels are the sets' own "
             "(literature or an independent fit), not APOGEE.</p>"]
    for path in tables:
        t = Table.read(path, format="ascii.ecsv")
        summ = Table(rows=[[r["label"], r["n"], r["robust_sigma"], r["bias"], r["mad"]]
                           for r in t.meta["summary"] if r["n"]],
                     names=["label", "n", "robust_sigma", "bias", "mad"])
        fig = Path(path).with_suffix(".png")
        first = next(c for c in t.colnames if c.endswith("_PRED"))
        n_pred = int(np.isfinite(t[first]).sum())
        parts += [f"<h3>{html.escape(t.meta['set'])}: {html.escape(t.meta['reference'])}</h3>",
                  f"<p>{len(t)} spectra, {n_pred} with a prediction.</p>", table_html(summ)]
        if fig.exists():
            parts.append(f"<img src='{html.escape(os.path.relpath(fig, report_dir))}'>")
    return parts


def run(args: argparse.Namespace) -> int:
    import h5py
    from astropy.table import Table

    from specbridge import flags
    from specbridge.report import figures
    from specbridge.vac.catalogue import read_fits_tables

    cfg = config_from_args(args)
    out = Path(args.output)
    figdir = out.parent
    figdir.mkdir(parents=True, exist_ok=True)
    try:
        metrics = Table.read(args.metrics, format="ascii.ecsv")
        selection = Table.read(args.selection, format="ascii.ecsv")
        summary = Table.read(args.summary, format="ascii.ecsv")
        with h5py.File(args.predictions, "r") as h:
            labels = [str(v) for v in h.attrs["labels"]]
            cands = [str(v) for v in h.attrs["candidates"]]
            split = h["split"][()]
            ref = h["ref"][()]
            test = split == 2
            preds = {n: (h[f"{n}/value"][()][test], h[f"{n}/error"][()][test])
                     for n in [*cands, "routed"]}
        vac = read_fits_tables(args.vac)
    except (OSError, KeyError, ValueError) as exc:
        raise CLIError(f"cannot read the evaluation or the VAC: {exc}") from None
    thr = cfg["evaluation"]["feh_threshold"]
    ref = ref[test]
    feh_ref = ref[:, labels.index("feh")]
    zs = str(summary["zeroshot"][labels.index("feh")]) or cands[0]
    ft = [str(v) for v in summary["finetuned"] if str(v)]
    best_ft = max(set(ft), key=ft.count) if ft else cands[-1]
    shown = {zs: preds[zs], best_ft: preds[best_ft], "routed": preds["routed"]}
    figures.one_to_one(figdir / FIGURES[0], ref, shown, labels, feh_ref, thr)
    figures.residual_vs_feh(figdir / FIGURES[1], ref, shown, labels, feh_ref, thr)
    figures.regime_sigma(figdir / FIGURES[2], metrics, labels, [*cands, "routed"])
    p = vac["PARAMS"]
    counts = {f.name: int(((p["FLAGS"] & f.value) != 0).sum()) for f in flags.FLAG_BITS}
    counts = {k: v for k, v in counts.items() if v}
    figures.vac_overview(figdir / FIGURES[3], p, labels, counts)

    n_rows = len(p)
    n_ok = int((~flags.is_fatal(p["FLAGS"]) & np.isfinite(p[labels[0].upper()])).sum())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>specbridge report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%}</style></head><body>",
        "<h1>specbridge: LAMOST-pretrained models on DESI</h1>",
        f"<p>Catalogue <code>{html.escape(str(args.vac))}</code>: {n_rows} rows (one per "
        f"input spectrum), {n_ok} with parameters. Evaluation on "
        f"{metrics.meta.get('n_val', '?')} validation and {metrics.meta.get('n_test', '?')} "
        f"test DESI spectra with reference labels; regimes split at [Fe/H] = {thr:g}; "
        f"router <code>{html.escape(cfg['inference']['router'])}</code>. Robust sigma: "
        "Tukey biweight about the median.</p>",
        "<h2>Answers (test split)</h2>",
        table_html(summary, ["label", "unit", "zeroshot", "zeroshot_test_sigma", "finetuned",
                             "finetuned_test_sigma", "routed_test_sigma",
                             "routed_poor_test_sigma", "routed_rich_test_sigma",
                             "best_on_test", "best_on_test_sigma",
                             "finetuning_beats_zeroshot", "routing_beats_every_single"]),
        "<h2>Selection (validation split)</h2>", table_html(selection),
        f"<h2>One-to-one (test split): {html.escape(zs)}, {html.escape(best_ft)}, routed</h2>",
        f"<img src='{FIGURES[0]}'>",
        "<h2>Residuals vs reference [Fe/H] (test split)</h2>", f"<img src='{FIGURES[1]}'>",
        "<h2>Robust sigma by regime and candidate (test split)</h2>",
        f"<img src='{FIGURES[2]}'>"]
    for lab in labels:
        t = metrics[(metrics["split"] == "test") & (metrics["label"] == lab)
                    & (metrics["snr_bin"] == "all")]
        parts += [f"<h3>{html.escape(lab)} ({html.escape(str(t['unit'][0]))})</h3>",
                  table_html(t, ["candidate", "regime", "n", "robust_sigma", "bias", "mad",
                                 "outlier_fraction", "within_1sigma", "z_robust_sigma"])]
    parts += ["<h2>The catalogue</h2>", f"<img src='{FIGURES[3]}'>"]
    parts += real_sections(args.real or [], out.parent)
    parts.append("</body></html>")
    with atomic_output(out) as tmp:
        Path(tmp).write_text("\n".join(parts))
    log.info("wrote %s and %d figures", out, len(FIGURES))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and tables of the evaluation and the VAC",
                       description="One HTML page: the answers (fine-tuning vs zero-shot, "
                                   "routing vs single candidates), the selection, one-to-one "
                                   "plots, residuals vs [Fe/H], per-regime tables, and the "
                                   "catalogue's overview; figures written beside it.")
    add_config_argument(p)
    p.add_argument("--metrics", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--predictions", required=True, help="predictions.h5 of evaluate")
    p.add_argument("--vac", required=True, help="merged VAC FITS file")
    p.add_argument("--real", nargs="*", help="tables of validate-real (real LAMOST sets)")
    p.add_argument("--output", required=True, help="report HTML page (figures beside it)")
    p.set_defaults(func=run)
