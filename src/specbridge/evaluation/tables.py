"""Metrics tables per candidate, split, label, regime and S/N bin, and the summary that
answers the transfer questions (fine-tuning vs zero-shot, routing vs single candidates)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from astropy.table import Table

from specbridge.evaluation.metrics import residual_metrics
from specbridge.inference.routing import METAL_POOR, METAL_RICH, regime_of
from specbridge.labels import (
    UNITS,  # noqa: F401  (re-exported: label -> unit)
    unit,
)
from specbridge.splits import SPLIT_CODES

ROUTED = "routed"


def snr_bin_names(edges: Sequence[float]) -> list[str]:
    return [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


INTERVAL_COLUMNS = ("robust_sigma_lo", "robust_sigma_hi", "bias_lo", "bias_hi")
COLUMNS = ("candidate", "model", "strategy", "split", "label", "unit", "regime_basis", "regime",
           "snr_bin", "n", "robust_sigma", "robust_sigma_lo", "robust_sigma_hi", "bias",
           "bias_lo", "bias_hi", "mad", "outlier_fraction", "within_1sigma", "within_2sigma",
           "z_robust_sigma")


def intervals(resid: np.ndarray, groups: np.ndarray | None, boot: Mapping | None
              ) -> dict[str, float]:
    """robust_sigma_lo/_hi and bias_lo/_hi: bootstrap intervals over stars (``groups``: (n,)
    star keys; None: each row a star) of the residuals ``resid`` (n,) (NaN rows left out)
    at ``boot['level']`` with ``boot['n_boot']`` replicates and ``boot['seed']``; all NaN
    without ``boot``."""
    out = dict.fromkeys(INTERVAL_COLUMNS, float("nan"))
    if not boot:
        return out
    from specbridge.evaluation.bootstrap import bootstrap_interval

    kw = {"groups": groups, "n_boot": int(boot["n_boot"]), "level": float(boot["level"]),
          "seed": int(boot["seed"])}
    if np.isfinite(resid).sum() >= 3:
        rs = bootstrap_interval("robust_sigma", resid, **kw)
        out["robust_sigma_lo"], out["robust_sigma_hi"] = rs.lo, rs.hi
    if np.isfinite(resid).any():
        b = bootstrap_interval("bias", resid, **kw)
        out["bias_lo"], out["bias_hi"] = b.lo, b.hi
    return out


def metrics_rows(name: str, split: np.ndarray, value: np.ndarray, error: np.ndarray,
                 ref: np.ndarray, ref_err: np.ndarray, snr: np.ndarray, labels: Sequence[str],
                 threshold: float, snr_edges: Sequence[float], *,
                 groups: np.ndarray | None = None, boot: Mapping | None = None,
                 router_regime: np.ndarray | None = None, reference: bool = True
                 ) -> list[dict]:
    """Metric rows of one candidate: for each split (val, test) and label, with
    ``reference`` the rows of regime_basis 'reference': regime (all; metal_poor, metal_rich
    by the reference [Fe/H]) and S/N bin (all; each [lo, hi) bin); with ``router_regime``
    ((n,) int8 regime codes from the router's [Fe/H], see routing.regime_of) the rows of
    regime_basis 'router' (metal_poor, metal_rich; S/N bin all). Robust sigma and bias get
    bootstrap intervals over stars (see :func:`intervals`).

    split: (n,) codes; value, error, ref, ref_err: (n, n_labels); snr: (n,); groups: (n,)
    star keys.
    """
    model, _, strategy = name.rpartition("_") if name != ROUTED else ("", "", ROUTED)
    n = len(split)
    cells = []  # (regime_basis, regime, snr_bin, mask)
    if reference:
        ref_regime = (regime_of(ref[:, list(labels).index("feh")], threshold)
                      if "feh" in labels else np.full(n, -1, np.int8))
        cells += [("reference", "all", "all", np.ones(n, bool)),
                  ("reference", "metal_poor", "all", ref_regime == METAL_POOR),
                  ("reference", "metal_rich", "all", ref_regime == METAL_RICH)]
        for nm, lo, hi in zip(snr_bin_names(snr_edges), snr_edges[:-1], snr_edges[1:],
                              strict=True):
            # regime x S/N cells would be too sparse to mean anything
            cells.append(("reference", "all", nm, (snr >= lo) & (snr < hi)))
    if router_regime is not None:
        cells += [("router", "metal_poor", "all", router_regime == METAL_POOR),
                  ("router", "metal_rich", "all", router_regime == METAL_RICH)]
    rows = []
    for sp in ("val", "test"):
        in_split = split == SPLIT_CODES[sp]
        for i, lab in enumerate(labels):
            for basis, rg, bn, cmask in cells:
                m = in_split & cmask
                stats = residual_metrics(value[m, i], error[m, i], ref[m, i], ref_err[m, i])
                with np.errstate(invalid="ignore"):
                    resid = value[m, i] - ref[m, i]
                stats.update(intervals(resid, None if groups is None else groups[m], boot))
                rows.append({"candidate": name, "model": model or name,
                             "strategy": strategy, "split": sp, "label": lab,
                             "unit": unit(lab), "regime_basis": basis, "regime": rg,
                             "snr_bin": bn, **stats})
    return rows


def metrics_table(rows: list[dict]) -> Table:
    cols = list(COLUMNS)
    return Table(rows=[[r[c] for c in cols] for r in rows], names=cols)


def cell(metrics: Table, cand: str, split: str, label: str, regime: str = "all",
         basis: str = "reference", snr_bin: str = "all"):
    """The row of ``metrics`` for a candidate, split, label, regime (by ``basis``, for
    regime 'all' any) and S/N bin; None if there is none."""
    m = ((metrics["candidate"] == cand) & (metrics["split"] == split)
         & (metrics["label"] == label) & (metrics["regime"] == regime)
         & (metrics["snr_bin"] == snr_bin))
    if "regime_basis" in metrics.colnames and regime != "all":
        m &= metrics["regime_basis"] == basis
    rows = metrics[m]
    return rows[0] if len(rows) else None


def _sigma(metrics: Table, cand: str, split: str, label: str, regime: str = "all",
           col: str = "robust_sigma") -> float:
    r = cell(metrics, cand, split, label, regime) if cand else None
    return float(r[col]) if r is not None and col in r.colnames else float("nan")


def _point_verdict(diff: float) -> str:
    if not np.isfinite(diff):
        return "not significant"
    return "yes" if diff < 0 else "no" if diff > 0 else "not significant"


def summary(metrics: Table, labels: Sequence[str], candidates: Sequence[str],
            paired: Callable | None = None, router: str = "") -> Table:
    """Per label, test-set robust sigma (with its interval) of: the best zero-shot candidate,
    the fine-tuned candidate chosen on validation, the single candidate chosen on validation,
    the routed combination, and the best single candidate on the test set itself; and the
    answers as paired differences on the test stars with their intervals and verdicts:
    fine-tuned minus zero-shot (``finetuning_beats_zeroshot``) and routed minus the best
    single candidate on test (``routing_beats_every_single``): "yes" (lower beyond the
    interval), "no" (higher beyond it) or "not significant".

    ``paired(label, a, b)``: the :class:`~specbridge.evaluation.bootstrap.PairedDifference`
    of robust sigma of candidate a against b on the test stars; None: the verdict of the
    point difference alone (no interval). ``router``: the candidate whose [Fe/H] routed."""
    nan = float("nan")
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

        def compare(a, b, lab=lab):
            if not a or not b:
                return nan, nan, nan, "not significant"
            if paired is None:
                d = _sigma(metrics, a, "test", lab) - _sigma(metrics, b, "test", lab)
                return d, nan, nan, _point_verdict(d)
            return tuple(paired(lab, a, b))

        ft_zs = compare(ft, zs)
        rt_best = compare(ROUTED, oracle)
        row = {"label": lab, "unit": unit(lab), "router": router}
        for key, cand in (("zeroshot", zs), ("finetuned", ft), ("single", single),
                          ("routed", ROUTED), ("best_on_test", oracle)):
            if key not in ("routed",):
                row[key] = cand or ""
            sig = f"{key}_test_sigma" if key != "best_on_test" else "best_on_test_sigma"
            row[sig] = _sigma(metrics, cand, "test", lab)
            row[f"{sig}_lo"] = _sigma(metrics, cand, "test", lab, col="robust_sigma_lo")
            row[f"{sig}_hi"] = _sigma(metrics, cand, "test", lab, col="robust_sigma_hi")
        row.update({
            "finetuned_minus_zeroshot": ft_zs[0], "finetuned_minus_zeroshot_lo": ft_zs[1],
            "finetuned_minus_zeroshot_hi": ft_zs[2], "finetuning_beats_zeroshot": ft_zs[3],
            "routed_minus_best_single": rt_best[0], "routed_minus_best_single_lo": rt_best[1],
            "routed_minus_best_single_hi": rt_best[2],
            "routing_beats_every_single": rt_best[3],
            "routed_poor_test_sigma": _sigma(metrics, ROUTED, "test", lab, "metal_poor"),
            "routed_rich_test_sigma": _sigma(metrics, ROUTED, "test", lab, "metal_rich"),
        })
        rows.append(row)
    return Table(rows=rows)


def interval_text(v, lo, hi) -> str:
    """``0.095 [0.089, 0.101]``; the value alone where the interval is NaN."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return _fmt(float(v))
    return f"{_fmt(float(v))} [{_fmt(float(lo))}, {_fmt(float(hi))}]"


def compact(table: Table, columns: Sequence[str] | None = None) -> Table:
    """``table``'s ``columns`` with every column c that has c_lo and c_hi written as
    ``value [lo, hi]`` (strings) and its _lo/_hi columns left out."""
    cols = [c for c in (columns or table.colnames)
            if not ((c.endswith("_lo") and c[:-3] in table.colnames)
                    or (c.endswith("_hi") and c[:-3] in table.colnames))]
    out = Table()
    for c in cols:
        if f"{c}_lo" in table.colnames and f"{c}_hi" in table.colnames:
            out[c] = [interval_text(r[c], r[f"{c}_lo"], r[f"{c}_hi"]) for r in table]
        else:
            out[c] = table[c]
    return out


def _fmt(v) -> str:
    if isinstance(v, (str, np.str_)):
        return str(v)
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
