"""The report's HTML: tables of astropy Tables, the real-data sections and the page itself."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

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


def label_efficiency_section(table: Any, report_dir: Path) -> list[str]:
    """HTML of the label-efficiency benchmark (``benchmarks/label_efficiency.py``): the ratio
    of robust sigma, embedding MLP / spectrum MLP, per strategy, N, label and regime with its
    interval, and the figure beside the table's file. [] without a table."""
    if table is None:
        return []
    from astropy.table import Table

    level = f"{100 * table.meta.get('level', 0.95):g} %"
    rows = []
    for r in table:
        rows.append((r["strategy"], int(r["n_labelled"]), r["label"], r["regime"],
                     int(r["n_test"]), f"{r['sigma_spectrum']:.3g}",
                     f"{r['sigma_embedding']:.3g}",
                     f"{r['ratio']:.2f} [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]",
                     r["embedding_better"]))
    shown = Table(rows=rows, names=["strategy", "N labelled", "label", "regime", "n test",
                                    "sigma spectrum", "sigma embedding",
                                    f"ratio [{level} interval]", "embedding better"])
    parts = ["<h2>Label efficiency: embeddings against the spectrum</h2>",
             f"<p>The spectrum MLP and the MLP on SpecFormer embeddings trained on N labelled "
             f"LAMOST spectra (the same stars for both), zero-shot and fine-tuned on DESI; test "
             f"robust sigma and their ratio with its {level} interval over stars. From "
             f"<code>{html.escape(str(table.meta.get('path', '')))}"
             "</code> (benchmarks/label_efficiency.py).</p>"]
    fig = Path(str(table.meta.get("path", ""))).with_suffix(".png")
    if fig.exists():
        parts.append(f"<img src='{html.escape(os.path.relpath(fig, report_dir))}'>")
    return [*parts, table_html(shown)]


def scoreboard_section(board: Any) -> list[str]:
    """HTML of the real-data scoreboard (astropy Table of the scoreboard stage; None: no
    section): the whole-set rows, then the cells by S/N bin and regime."""
    from specbridge.stages.scoreboard import FEW_LABEL_INTRO, display_tables, few_label_table, intro

    if board is None:
        return []
    parts = ["<h2>Real labelled spectra: scoreboard</h2>", f"<p>{html.escape(intro(board))}</p>"]
    if not len(board):
        return parts + ["<p>No real labelled set was found on this machine.</p>"]
    top, rest = display_tables(board)
    parts.append(table_html(top))
    few = board.meta.get("few_label") or []
    if few:
        parts += ["<h3>Calibration on a few real labels</h3>",
                  f"<p>{html.escape(FEW_LABEL_INTRO)}</p>", table_html(few_label_table(few))]
    if len(rest):
        parts += ["<h3>By S/N bin and [Fe/H] regime</h3>", table_html(rest)]
    return parts


_STYLE = ("<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
          "table{border-collapse:collapse;font-size:13px;margin:8px 0}"
          "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
          "img{max-width:100%}</style>")


def page_html(*, vac_path: str, params: Any, metrics: Any, selection: Any, summary: Any,
              labels: list[str], shown: tuple[str, str], threshold: float, router: str,
              real: list[str], report_dir: Path, scoreboard: Any = None,
              calibration: Any = None, foundation: dict[str, Any] | None = None,
              label_efficiency: Any = None) -> str:
    """The report page: the real sets' scoreboard, answers, selection, figures (named by
    :data:`FIGURES`, beside the page), per-label tables by regime, the catalogue's overview
    and the real sets' summaries and figures.
    ``params`` is the VAC's PARAMS table, ``shown`` the zero-shot and fine-tuned candidates
    drawn in the one-to-one figure, ``threshold`` the regime split in [Fe/H] (dex),
    ``scoreboard`` the real sets' scoreboard table (None: no such section),
    ``calibration`` the evaluation's error recalibration table (None: no such section),
    ``foundation`` the pretrained SpecFormer's metadata (None: no such section),
    ``label_efficiency`` the label-efficiency benchmark's table (None: no such section).
    Intervals are written ``value [lo, hi]``."""
    from specbridge import flags
    from specbridge.evaluation.markdown import ANSWER_COLUMNS, SELECTION_SHOWN, _with_ci
    from specbridge.evaluation.tables import compact
    from specbridge.labels import column

    zs, best_ft = shown
    n_rows = len(params)
    n_ok = int((~flags.is_fatal(params["FLAGS"]) & np.isfinite(params[column(labels[0])])
                ).sum())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>specbridge report</title>",
        _STYLE + "</head><body>",
        "<h1>specbridge: LAMOST-pretrained models on DESI</h1>",
        f"<p>Catalogue <code>{html.escape(str(vac_path))}</code>: {n_rows} rows (one per "
        f"input spectrum), {n_ok} with parameters. Evaluation on "
        f"{metrics.meta.get('n_val', '?')} validation and {metrics.meta.get('n_test', '?')} "
        f"test DESI spectra with reference labels; regimes split at [Fe/H] = {threshold:g}; "
        f"router <code>{html.escape(router)}</code>. Robust sigma: "
        "Tukey biweight about the median.</p>",
        *scoreboard_section(scoreboard),  # real spectra first
        "<h2>Answers (test split)</h2>",
        "<p>Paired differences of robust sigma on the same test stars (fine-tuned minus "
        "zero-shot; routed minus the best single candidate on test) with their bootstrap "
        "intervals; 'yes' only beyond the interval.</p>",
        table_html(compact(summary, _with_ci(summary, [c for c in ANSWER_COLUMNS
                                                       if c in summary.colnames]))),
        "<h2>Selection (validation split, regimes by the router's [Fe/H])</h2>",
        table_html(compact(selection, _with_ci(selection, [
            c for c in SELECTION_SHOWN if c in selection.colnames]))),
        f"<h2>One-to-one (test split): {html.escape(zs)}, {html.escape(best_ft)}, routed</h2>",
        f"<img src='{FIGURES[0]}'>",
        "<h2>Residuals vs reference [Fe/H] (test split)</h2>", f"<img src='{FIGURES[1]}'>",
        "<h2>Robust sigma by regime and candidate (test split)</h2>",
        f"<img src='{FIGURES[2]}'>"]
    if calibration is not None:
        parts += ["<h2>Error recalibration (validation split)</h2>",
                  "<p>Each candidate's errors scaled (and floored where needed) so that "
                  "z = (pred - ref) / sqrt((s err)<sup>2</sup> + f<sup>2</sup> + "
                  "ref_err<sup>2</sup>) has robust sigma 1; the coverage columns below are "
                  "after it.</p>", table_html(calibration)]
    parts.append("<h2>Per label (test split; regimes by the reference [Fe/H] unless "
                 "regime_basis says router)</h2>")
    for lab in labels:
        t = metrics[(metrics["split"] == "test") & (metrics["label"] == lab)
                    & (metrics["snr_bin"] == "all")]
        cols = [c for c in ("candidate", "regime_basis", "regime", "n", "robust_sigma",
                            "bias", "mad", "outlier_fraction", "within_1sigma",
                            "within_2sigma", "z_robust_sigma") if c in t.colnames]
        parts += [f"<h3>{html.escape(lab)} ({html.escape(str(t['unit'][0]))})</h3>",
                  table_html(compact(t, _with_ci(t, cols)))]
    parts += foundation_section(foundation, params)
    parts += label_efficiency_section(label_efficiency, report_dir)
    parts += ["<h2>The catalogue</h2>", f"<img src='{FIGURES[3]}'>"]
    parts += real_sections(real, report_dir)
    parts.append("</body></html>")
    return "\n".join(parts)


def foundation_section(meta: dict[str, Any] | None, params: Any = None) -> list[str]:
    """HTML of the foundation model's section from the pretrained SpecFormer's checkpoint
    metadata: its pretraining set (labelled and unlabelled LAMOST spectra, those left out as
    DESI validation/test stars), masked reconstruction against the patch-mean baseline, the
    linear probes per label, and the out-of-domain threshold with the VAC rows flagged
    (``params``: the VAC's PARAMS table, optional). [] without metadata."""
    from specbridge import flags

    if not meta:
        return []
    out = ["<h2>The foundation model (SpecFormer)</h2>"]
    val, base = meta.get("val_loss"), meta.get("val_patch_mean_loss")
    n_target = int(meta.get("n_target_spectra", 0) or 0)
    text = (f"<p>Pretrained self-supervised on {meta.get('n_train_spectra', '?')} "
            f"{'LAMOST and DESI' if n_target else 'LAMOST'} spectra, labelled or not "
            f"({meta.get('n_val_spectra', '?')} more for validation"
            + (f"; {n_target} of all these are DESI spectra of training-split stars, labels "
               "unused" if n_target else "")
            + f"); {meta.get('n_excluded_holdout', 0)} LAMOST spectra of stars in the "
            "DESI validation or test splits were left out. ")
    from specbridge.training.augment import augment_settings

    aug = augment_settings(meta.get("training") or {})
    if aug[0] > 0:
        text += (f"Denoising: {100 * aug[0]:.0f} % of each batch seen degraded "
                 f"to an S/N between {aug[1]:g} and its own, the hidden "
                 "pixels scored against the spectrum as observed. ")
    if val is not None and base:
        text += (f"Masked-pixel reconstruction on LAMOST validation spectra: mean squared error "
                 f"{float(val):.4g} against {float(base):.4g} for predicting each hidden pixel "
                 f"by its patches' mean (ratio {float(val) / float(base):.3f}).")
    out.append(text + "</p>")
    probe = meta.get("probe") or {}
    if probe:
        rows = "".join(
            f"<tr><td>{html.escape(lab)}</td><td>{q['embedding']:.4g}</td>"
            f"<td>{q['pixels']:.4g}</td><td>{q['spread']:.4g}</td>"
            f"<td>{q['n_train']}</td><td>{q['n_val']}</td></tr>" for lab, q in probe.items())
        out += ["<p>Linear probes (ridge regression) per label on held-out labelled LAMOST "
                "spectra: robust sigma of the probe on the frozen, standardised embeddings "
                "and, for reference, on the pixels.</p>",
                "<table><tr><th>label</th><th>probe on embeddings</th><th>probe on pixels"
                "</th><th>label spread</th><th>n train</th><th>n validation</th></tr>"
                f"{rows}</table>"]
    q = meta.get("ood_score_quantiles")
    if q and params is not None:
        fl = np.asarray(params["FLAGS"], np.int64)
        ok = ~flags.is_fatal(fl)
        n_spec = int(((fl & flags.flag("OOD_SPECTRUM")) != 0)[ok].sum())
        n_lab = int(((fl & flags.flag("OOD_LABELS")) != 0)[ok].sum())
        out.append(f"<p>Out-of-domain flags in the catalogue: OOD_SPECTRUM on {n_spec} and "
                   f"OOD_LABELS on {n_lab} of {int(ok.sum())} usable rows (the score "
                   "threshold is in the VAC header, OODTHR).</p>")
    return out
