"""Figures of the report: one-to-one plots, residuals vs [Fe/H], per-regime scatter by
candidate, the VAC's distributions. Each function writes one PNG (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specbridge.evaluation.metrics import residual_metrics  # noqa: E402
from specbridge.labels import axis_label, column, tex, unit  # noqa: E402


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def one_to_one(path: str | Path, ref: np.ndarray, preds: dict[str, tuple[np.ndarray,
               np.ndarray]], labels: Sequence[str], feh_ref: np.ndarray,
               threshold: float) -> None:
    """Predicted vs reference per label (rows) and candidate (columns); metal-poor stars
    (reference [Fe/H] <= threshold) in red. ref: (n, n_labels); preds[name][0]: (n, n_labels)."""
    names = list(preds)
    fig, axes = plt.subplots(len(labels), len(names), figsize=(3.3 * len(names),
                             3.0 * len(labels)), squeeze=False)
    poor = feh_ref <= threshold
    for i, lab in enumerate(labels):
        x = ref[:, i]
        ok = np.isfinite(x)
        lo, hi = (np.nanpercentile(x[ok], [0.5, 99.5]) if ok.any() else (0, 1))
        pad = 0.05 * (hi - lo)
        for j, name in enumerate(names):
            ax = axes[i, j]
            y = preds[name][0][:, i]
            ax.scatter(x[~poor], y[~poor], s=4, alpha=0.5, color="C0", label="[Fe/H] > "
                       f"{threshold:g}")
            ax.scatter(x[poor], y[poor], s=6, alpha=0.8, color="C3",
                       label=f"[Fe/H] <= {threshold:g}")
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            m = residual_metrics(y, preds[name][1][:, i], x)
            ax.text(0.04, 0.96, f"$\\sigma$ = {m['robust_sigma']:.3g} {unit(lab)}\n"
                    f"bias = {m['bias']:.2g}\nn = {m['n']}", transform=ax.transAxes,
                    va="top", fontsize=8)
            if i == 0:
                ax.set_title(name, fontsize=10)
            ax.set_xlabel(f"reference {tex(lab)}", fontsize=8)
            ax.set_ylabel(f"predicted {tex(lab)}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def residual_vs_feh(path: str | Path, ref: np.ndarray, preds: dict[str, tuple[np.ndarray,
                    np.ndarray]], labels: Sequence[str], feh_ref: np.ndarray,
                    threshold: float) -> None:
    """Residual (predicted - reference) vs reference [Fe/H] with a running median and the
    regime threshold, per label (rows) and candidate (columns)."""
    names = list(preds)
    fig, axes = plt.subplots(len(labels), len(names), figsize=(3.3 * len(names),
                             2.6 * len(labels)), squeeze=False, sharex=True)
    edges = np.linspace(np.nanmin(feh_ref), np.nanmax(feh_ref), 12) if np.isfinite(
        feh_ref).any() else np.linspace(-2.5, 0.5, 12)
    for i, lab in enumerate(labels):
        for j, name in enumerate(names):
            ax = axes[i, j]
            d = preds[name][0][:, i] - ref[:, i]
            ax.scatter(feh_ref, d, s=3, alpha=0.4, color="C0")
            mid, med = [], []
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                m = (feh_ref >= a) & (feh_ref < b) & np.isfinite(d)
                if m.sum() >= 5:
                    mid.append(0.5 * (a + b))
                    med.append(np.median(d[m]))
            ax.plot(mid, med, "k-", lw=1.5)
            ax.axhline(0, color="grey", lw=0.6)
            ax.axvline(threshold, color="C3", lw=0.8, ls="--")
            finite = d[np.isfinite(d)]
            if finite.size:
                lim = np.percentile(np.abs(finite), 99) * 1.1 or 1.0
                ax.set_ylim(-lim, lim)
            if i == 0:
                ax.set_title(name, fontsize=10)
            if i == len(labels) - 1:
                ax.set_xlabel("reference [Fe/H]", fontsize=8)
            ax.set_ylabel(f"$\\Delta$ {tex(lab)}", fontsize=8)
            ax.tick_params(labelsize=7)
    _save(fig, path)


def regime_sigma(path: str | Path, table, labels: Sequence[str], candidates: Sequence[str],
                 split: str = "test") -> None:
    """Robust sigma per candidate in each regime by the reference [Fe/H] (grouped bars, with
    the bootstrap interval as error bars where the table has one), one panel per label.
    ``table``: the metrics table."""
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.6), squeeze=False)
    regimes = ("metal_poor", "metal_rich", "all")
    for i, lab in enumerate(labels):
        ax = axes[0, i]
        t = table[(table["split"] == split) & (table["label"] == lab)
                  & (table["snr_bin"] == "all")]
        if "regime_basis" in t.colnames:
            t = t[t["regime_basis"] == "reference"]
        x = np.arange(len(candidates))
        ci = "robust_sigma_lo" in t.colnames
        for k, rg in enumerate(regimes):
            vals, lo, hi = [], [], []
            for c in candidates:
                r = t[(t["candidate"] == c) & (t["regime"] == rg)]
                v = float(r["robust_sigma"][0]) if len(r) else np.nan
                vals.append(v)
                lo.append(v - float(r["robust_sigma_lo"][0]) if len(r) and ci else np.nan)
                hi.append(float(r["robust_sigma_hi"][0]) - v if len(r) and ci else np.nan)
            err = np.nan_to_num(np.clip([lo, hi], 0, None)) if ci else None
            ax.bar(x + (k - 1) * 0.27, vals, width=0.27, label=rg.replace("_", "-"),
                   yerr=err, capsize=1.5, error_kw={"elinewidth": 0.6})
        ax.set_xticks(x)
        ax.set_xticklabels(candidates, rotation=70, fontsize=7)
        ax.set_title(f"{axis_label(lab)}, {split}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("robust $\\sigma$")
    axes[0, 0].legend(fontsize=7)
    _save(fig, path)


def vac_overview(path: str | Path, params: np.ndarray, labels: Sequence[str],
                 flag_counts: dict[str, int]) -> None:
    """Kiel diagram coloured by [Fe/H], histograms of each label, and flag counts."""
    fig, axes = plt.subplots(1, len(labels) + 2, figsize=(3.2 * (len(labels) + 2), 3.2))
    teff, logg, feh = column("teff"), column("logg"), column("feh")
    if {teff, logg, feh} <= set(params.dtype.names):
        ax = axes[0]
        sc = ax.scatter(params[teff], params[logg], c=params[feh], s=2, cmap="viridis")
        ax.invert_xaxis()
        ax.invert_yaxis()
        ax.set_xlabel(axis_label("teff"))
        ax.set_ylabel(tex("logg"))
        fig.colorbar(sc, ax=ax, label=tex("feh"))
    for i, lab in enumerate(labels):
        v = params[column(lab)]
        axes[i + 1].hist(v[np.isfinite(v)], bins=40, color="C0")
        axes[i + 1].set_xlabel(axis_label(lab))
    ax = axes[-1]
    names = list(flag_counts)
    ax.barh(np.arange(len(names)), [flag_counts[n] for n in names], color="C1")
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("spectra")
    ax.set_title("flags set", fontsize=9)
    _save(fig, path)
