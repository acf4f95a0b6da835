"""The per-regime selection table: for each label, the candidate with the lowest validation
total error (sqrt(bias^2 + robust sigma^2): a small scatter about a large offset is not a good
answer) over all validation stars is the default for both regimes; a regime-specific
candidate replaces it only where it is better on that regime's validation stars beyond the
paired bootstrap interval (a one-standard-error rule at the configured level), and only in a
regime with at least ``min_n`` validation stars. Regimes are those of the metrics rows with
``regime_basis`` 'router' where the table has them (the router's [Fe/H], as at inference),
else the reference label's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from astropy.table import Table

from specbridge.inference.routing import REGIMES

SELECTION_COLUMNS = ("label", "regime", "candidate", "val_robust_sigma", "val_bias",
                     "val_total_error", "val_n", "basis",
                     "overall", "regime_best", "regime_best_minus_overall",
                     "regime_best_minus_overall_lo", "regime_best_minus_overall_hi",
                     "verdict")


def _total(rows: Table, cand: str | None) -> float:
    """The total error sqrt(bias^2 + robust_sigma^2) of ``cand`` in ``rows`` (NaN: none; the
    robust sigma alone for a table without a bias column)."""
    r = rows[rows["candidate"] == cand] if cand else rows[:0]
    if not len(r):
        return float("nan")
    bias = r["bias"][0] if "bias" in rows.colnames else 0.0
    return float(np.hypot(bias, r["robust_sigma"][0]))


def _best(rows: Table, candidates: Sequence[str]) -> tuple[str | None, float, int]:
    best, best_s, best_n = None, np.inf, 0
    for c in candidates:  # ties go to the earlier candidate
        t = _total(rows, c)
        if np.isfinite(t) and t < best_s:
            best, best_s, best_n = c, t, int(_of(rows, c, "n", 0))
    return best, best_s, best_n


def _of(rows: Table, cand: str | None, col: str, missing):
    r = rows[rows["candidate"] == cand] if cand else rows[:0]
    return r[col][0] if len(r) else missing


def regime_rows(val: Table, basis: str | None = None) -> tuple[Table, str]:
    """The per-regime validation rows of ``basis`` ('router' where the table has them, else
    'reference'; tables without a regime_basis column: all rows) and the basis used."""
    if "regime_basis" not in val.colnames:
        return val, "reference"
    if basis is None:
        basis = "router" if (val["regime_basis"] == "router").any() else "reference"
    return val[val["regime_basis"] == basis], basis


def select(metrics: Table, labels: Sequence[str], candidates: Sequence[str],
           paired: Callable | None = None, min_n: int = 0,
           basis: str | None = None) -> Table:
    """Selection table (one row per label x regime, :data:`SELECTION_COLUMNS`) from the rows
    of ``metrics`` with split 'val' and snr_bin 'all'; meta 'regime_basis' says which regimes.

    ``overall``: the candidate with the lowest total error (sqrt(bias^2 + robust_sigma^2),
    from the rows' ``bias`` and ``robust_sigma``) on all validation stars (ties to the earlier
    candidate); ``regime_best``: the lowest in the regime. ``paired(label, regime, a, b)``
    gives the :class:`~specbridge.evaluation.bootstrap.PairedDifference` of total error of a
    against b on the regime's validation stars: the regime's candidate is
    ``regime_best`` (basis 'regime') where its verdict against ``overall`` is "yes", else
    ``overall`` (basis 'all'). Without ``paired`` every lower robust sigma counts: the regime
    best serves (basis 'regime'). A regime with fewer than ``min_n`` validation stars (the
    most any candidate has there), or none, gets ``overall`` (basis 'all'); without any
    candidate with stars, the first candidate (basis 'default').
    ``val_robust_sigma``, ``val_bias``, ``val_total_error``, ``val_n``: the chosen
    candidate's in the regime."""
    val = metrics[(metrics["split"] == "val") & (metrics["snr_bin"] == "all")]
    per_regime, used = regime_rows(val, basis)
    out = Table(names=SELECTION_COLUMNS,
                dtype=("U16", "U16", "U32", "f8", "f8", "f8", "i8", "U16", "U32", "U32", "f8",
                       "f8", "f8", "U16"))
    out.meta["regime_basis"] = used
    nan = float("nan")
    for lab in labels:
        everyone = val[(val["label"] == lab) & (val["regime"] == "all")]
        overall = _best(everyone, candidates)[0]
        for regime in REGIMES:
            rows = per_regime[(per_regime["label"] == lab) & (per_regime["regime"] == regime)]
            best = _best(rows, candidates)[0]
            n_reg = int(max(rows["n"])) if len(rows) else 0
            diff = (nan, nan, nan, "not significant")
            if best is not None and n_reg >= min_n and n_reg > 0:
                if paired is None:
                    chosen, how = best, "regime"
                    diff = (_total(rows, best) - _total(rows, overall), nan, nan,
                            "yes" if best != overall else "not significant")
                elif best == overall:
                    chosen, how = overall, "all"
                    diff = (0.0, 0.0, 0.0, "not significant")
                else:
                    diff = tuple(paired(lab, regime, best, overall))
                    chosen, how = (best, "regime") if diff[3] == "yes" else (overall, "all")
            elif overall is not None:
                chosen, how = overall, "all"
            else:
                chosen, how = candidates[0], "default"
            out.add_row((lab, regime, chosen, float(_of(rows, chosen, "robust_sigma", nan)),
                         float(_of(rows, chosen, "bias", nan) if "bias" in rows.colnames
                               else nan), _total(rows, chosen),
                         int(_of(rows, chosen, "n", 0)), how, overall or "", best or "",
                         *map(float, diff[:3]), diff[3]))
    return out


def selection_mapping(table: Table) -> dict[tuple[str, str], str]:
    """{(label, regime): candidate} from a selection table."""
    return {(str(r["label"]), str(r["regime"])): str(r["candidate"]) for r in table}
