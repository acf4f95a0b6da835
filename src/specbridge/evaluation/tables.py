"""Metrics tables per candidate, split, label, regime and S/N bin, and the summary that
answers the transfer questions (fine-tuning vs zero-shot, routing vs single candidates)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.table import Table

from specbridge.evaluation.metrics import METRIC_COLUMNS, residual_metrics
from specbridge.inference.routing import METAL_POOR, METAL_RICH, regime_of
from specbridge.labels import (
    UNITS,  # noqa: F401  (re-exported: label -> unit)
    unit,
)
from specbridge.splits import SPLIT_CODES

ROUTED = "routed"


def snr_bin_names(edges: Sequence[float]) -> list[str]:
    return [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


def metrics_rows(name: str, split: np.ndarray, value: np.ndarray, error: np.ndarray,
                 ref: np.ndarray, ref_err: np.ndarray, snr: np.ndarray, labels: Sequence[str],
                 threshold: float, snr_edges: Sequence[float]) -> list[dict]:
    """Metric rows of one candidate: for each split (val, test), label, regime (all;
    metal_poor, metal_rich by the reference [Fe/H]) and S/N bin (all; each [lo, hi) bin).

    split: (n,) codes; value, error, ref, ref_err: (n, n_labels); snr: (n,).
    """
    model, _, strategy = name.rpartition("_") if name != ROUTED else ("", "", ROUTED)
    ref_regime = (regime_of(ref[:, list(labels).index("feh")], threshold) if "feh" in labels
                  else np.full(len(split), -1, np.int8))
    regimes = {"all": np.ones(len(split), bool), "metal_poor": ref_regime == METAL_POOR,
               "metal_rich": ref_regime == METAL_RICH}
    bins = {"all": np.ones(len(split), bool)}
    for nm, lo, hi in zip(snr_bin_names(snr_edges), snr_edges[:-1], snr_edges[1:],
                          strict=True):
        bins[nm] = (snr >= lo) & (snr < hi)
    rows = []
    for sp in ("val", "test"):
        in_split = split == SPLIT_CODES[sp]
        for i, lab in enumerate(labels):
            for rg, rmask in regimes.items():
                for bn, bmask in bins.items():
                    if rg != "all" and bn != "all":
                        continue  # regime x S/N cells would be too sparse to mean anything
                    m = in_split & rmask & bmask
                    stats = residual_metrics(value[m, i], error[m, i], ref[m, i], ref_err[m, i])
                    rows.append({"candidate": name, "model": model or name,
                                 "strategy": strategy, "split": sp, "label": lab,
                                 "unit": unit(lab), "regime": rg, "snr_bin": bn,
                                 **stats})
    return rows


def metrics_table(rows: list[dict]) -> Table:
    cols = ["candidate", "model", "strategy", "split", "label", "unit", "regime", "snr_bin",
            *METRIC_COLUMNS]
    return Table(rows=[[r[c] for c in cols] for r in rows], names=cols)


def _sigma(metrics: Table, cand: str, split: str, label: str, regime: str = "all") -> float:
    m = metrics[(metrics["candidate"] == cand) & (metrics["split"] == split)
                & (metrics["label"] == label) & (metrics["regime"] == regime)
                & (metrics["snr_bin"] == "all")]
    return float(m["robust_sigma"][0]) if len(m) else float("nan")


def summary(metrics: Table, labels: Sequence[str], candidates: Sequence[str]) -> Table:
    """Per label, test-set robust sigma of: the best zero-shot candidate, the fine-tuned
    candidate chosen on validation, the single candidate chosen on validation, the routed
    combination, and the best single candidate on the test set itself; plus the answers."""
    rows = []
    for lab in labels:
        val = {c: _sigma(metrics, c, "val", lab) for c in candidates}

        def by_val(cs, val=val):
            cs = [c for c in cs if np.isfinite(val[c])]
            return min(cs, key=val.__getitem__) if cs else None

        zs = by_val([c for c in candidates if c.endswith("_zeroshot")])
        ft = by_val([c for c in candidates if not c.endswith("_zeroshot")])
        single = by_val(list(candidates))
        test = {c: _sigma(metrics, c, "test", lab) for c in candidates}
        oracle = min(test, key=lambda c: test[c] if np.isfinite(test[c]) else np.inf)
        routed = _sigma(metrics, ROUTED, "test", lab)
        s_zs = test.get(zs, np.nan) if zs else np.nan
        s_ft = test.get(ft, np.nan) if ft else np.nan
        rows.append({
            "label": lab, "unit": unit(lab),
            "zeroshot": zs or "", "zeroshot_test_sigma": s_zs,
            "finetuned": ft or "", "finetuned_test_sigma": s_ft,
            "single": single or "", "single_test_sigma": test.get(single, np.nan),
            "routed_test_sigma": routed,
            "best_on_test": oracle, "best_on_test_sigma": test[oracle],
            "finetuning_beats_zeroshot": bool(s_ft < s_zs),
            "routing_beats_every_single": bool(routed < min(test.values())),
            "routed_poor_test_sigma": _sigma(metrics, ROUTED, "test", lab, "metal_poor"),
            "routed_rich_test_sigma": _sigma(metrics, ROUTED, "test", lab, "metal_rich"),
        })
    return Table(rows=rows)


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}")
    return str(v)


def markdown(table: Table, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of ``table``'s ``columns``."""
    cols = list(columns or table.colnames)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)
