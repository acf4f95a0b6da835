"""The evaluation's tables as one markdown page (results/evaluation/metrics.md)."""

from __future__ import annotations

from typing import Any


def metrics_markdown(metrics: Any, selection: Any, summ: Any, labels: list[str],
                     names: list[str], meta: dict[str, Any]) -> str:
    """The answers, the selection, robust sigma by regime and by S/N of the astropy tables
    ``metrics``, ``selection`` and ``summ`` (see evaluation.tables) as markdown."""
    from specbridge.evaluation.tables import markdown

    out = ["# Evaluation on DESI", "",
           f"{meta['n_val']} validation and {meta['n_test']} test spectra with reference "
           f"labels; regimes split at [Fe/H] = {meta['feh_threshold']} (by the reference "
           f"label in these tables; by the router {meta['router']} when routing). Robust "
           "sigma: Tukey biweight (c = 6) about the median.", "",
           "## Answers (test split)", "",
           markdown(summ, ["label", "unit", "zeroshot", "zeroshot_test_sigma", "finetuned",
                           "finetuned_test_sigma", "routed_test_sigma", "best_on_test",
                           "best_on_test_sigma", "finetuning_beats_zeroshot",
                           "routing_beats_every_single"]), "",
           "## Selection (validation split)", "", markdown(selection), ""]
    for sp in ("test", "val"):
        out += [f"## Robust sigma by regime ({sp} split)", ""]
        for lab in labels:
            t = metrics[(metrics["split"] == sp) & (metrics["label"] == lab)
                        & (metrics["snr_bin"] == "all")]
            rows = []
            for cand in [*names, "routed"]:
                r = t[t["candidate"] == cand]
                get = {rg: r[r["regime"] == rg] for rg in ("all", "metal_poor", "metal_rich")}
                rows.append([cand] + [float(get[rg]["robust_sigma"][0]) for rg in get]
                            + [float(get["all"]["bias"][0]),
                               float(get["all"]["outlier_fraction"][0]),
                               float(get["all"]["within_1sigma"][0]),
                               float(get["all"]["z_robust_sigma"][0]),
                               int(get["all"]["n"][0])])
            from astropy.table import Table

            tab = Table(rows=rows, names=["candidate", "all", "metal_poor", "metal_rich",
                                          "bias", "outliers", "within_1sigma", "z_sigma", "n"])
            out += [f"### {lab} ({t['unit'][0]})", "", markdown(tab), ""]
    out += ["## By S/N (test split)", ""]
    for lab in labels:
        t = metrics[(metrics["split"] == "test") & (metrics["label"] == lab)
                    & (metrics["regime"] == "all") & (metrics["snr_bin"] != "all")]
        out += [f"### {lab}", "", markdown(t, ["candidate", "snr_bin", "n", "robust_sigma",
                                                "bias", "outlier_fraction"]), ""]
    return "\n".join(out)
