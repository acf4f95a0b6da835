"""The evaluation's tables as one markdown page (results/evaluation/metrics.md)."""

from __future__ import annotations

from typing import Any

ANSWER_COLUMNS = ("label", "unit", "zeroshot", "zeroshot_test_sigma", "finetuned",
                  "finetuned_test_sigma", "finetuned_minus_zeroshot",
                  "finetuning_beats_zeroshot", "routed_test_sigma", "best_on_test",
                  "best_on_test_sigma", "routed_minus_best_single",
                  "routing_beats_every_single")
SELECTION_SHOWN = ("label", "regime", "candidate", "val_robust_sigma", "val_bias",
                   "val_total_error", "val_n", "basis",
                   "overall", "regime_best", "regime_best_minus_overall", "verdict")


def _with_ci(table, columns):
    """``columns`` of ``table`` plus their _lo/_hi columns where present (for compact)."""
    out = []
    for c in columns:
        out.append(c)
        out += [f"{c}{s}" for s in ("_lo", "_hi") if f"{c}{s}" in table.colnames]
    return out


def intro(meta: dict[str, Any]) -> str:
    """The line under the page title (also the report's)."""
    b = meta.get("bootstrap") or {}
    level = b.get("level")
    ci = (f"Intervals: {100 * level:g} % percentile bootstrap over stars "
          f"({b.get('n_boot')} replicates); a winner is declared only beyond the paired "
          "interval." if level else "")
    return (f"{meta['n_val']} validation and {meta['n_test']} test spectra with reference "
            f"labels; regimes split at [Fe/H] = {meta['feh_threshold']}: by the reference "
            f"label in the regime tables (the scientific per-regime figures), by the router "
            f"{meta['router']} (inference.router: {meta.get('router_setting', meta['router'])}"
            f") for the selection, as at inference. Errors recalibrated on the validation "
            f"split. Robust sigma: Tukey biweight (c = 6) about the median. {ci}")


def metrics_markdown(metrics: Any, selection: Any, summ: Any, labels: list[str],
                     names: list[str], meta: dict[str, Any], calib: Any = None) -> str:
    """The answers, the selection, the calibration, robust sigma by regime and by S/N of the
    astropy tables ``metrics``, ``selection``, ``summ`` and ``calib`` (see
    evaluation.tables and evaluation.calibration) as markdown, with intervals written as
    ``value [lo, hi]``."""
    from astropy.table import Table

    from specbridge.evaluation.tables import cell, compact, markdown

    sel_cols = [c for c in SELECTION_SHOWN if c in selection.colnames]
    out = ["# Evaluation on DESI", "", intro(meta), "",
           "## Answers (test split)", "",
           "Paired differences of robust sigma on the same test stars: fine-tuned (best on "
           "validation) minus zero-shot, routed minus the best single candidate on test; "
           "'yes' only beyond the interval.", "",
           markdown(compact(summ, _with_ci(summ, [c for c in ANSWER_COLUMNS
                                                  if c in summ.colnames]))), "",
           f"## Selection (validation split, regimes by the "
           f"{selection.meta.get('regime_basis', 'router')} [Fe/H])", "",
           markdown(compact(selection, _with_ci(selection, sel_cols))), ""]
    if calib is not None:
        out += ["## Error recalibration (validation split)", "",
                "Errors scaled (and floored where needed) so that z = (pred - ref) / "
                "sqrt((s err)^2 + f^2 + ref_err^2) has robust sigma 1.", "",
                markdown(calib), ""]
    for sp in ("test", "val"):
        out += [f"## Robust sigma by regime ({sp} split; regimes by the reference [Fe/H])",
                ""]
        for lab in labels:
            rows = []
            for cand in [*names, "routed"]:
                get = {rg: cell(metrics, cand, sp, lab, rg)
                       for rg in ("all", "metal_poor", "metal_rich")}
                a = get["all"]
                row = [cand]
                for rg in get:
                    r = get[rg]
                    row += ([float(r["robust_sigma"]), float(r["robust_sigma_lo"]),
                             float(r["robust_sigma_hi"])] if r is not None
                            else [float("nan")] * 3)
                row += [float(a["bias"]), float(a["bias_lo"]), float(a["bias_hi"]),
                        float(a["outlier_fraction"]), float(a["within_1sigma"]),
                        float(a["within_2sigma"]), float(a["z_robust_sigma"]), int(a["n"])]
                rows.append(row)
            names_ = ["candidate"]
            for c in ("all", "metal_poor", "metal_rich", "bias"):
                names_ += [c, f"{c}_lo", f"{c}_hi"]
            names_ += ["outliers", "within_1sigma", "within_2sigma", "z_sigma", "n"]
            tab = Table(rows=rows, names=names_)
            unit = cell(metrics, names[0], sp, lab)["unit"]
            out += [f"### {lab} ({unit})", "", markdown(compact(tab)), ""]
    out += ["## By S/N (test split)", ""]
    for lab in labels:
        t = metrics[(metrics["split"] == "test") & (metrics["label"] == lab)
                    & (metrics["regime"] == "all") & (metrics["snr_bin"] != "all")]
        out += [f"### {lab}", "", markdown(compact(t, _with_ci(t, [
            "candidate", "snr_bin", "n", "robust_sigma", "bias", "outlier_fraction"]))), ""]
    return "\n".join(out)
