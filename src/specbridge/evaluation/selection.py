"""The per-regime selection table: for each label and regime, the candidate with the lowest
validation robust sigma. A pure function of the metrics table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.table import Table

from specbridge.inference.routing import REGIMES


def _best(rows: Table, candidates: Sequence[str]) -> tuple[str | None, float, int]:
    best, best_s, best_n = None, np.inf, 0
    for c in candidates:  # ties go to the earlier candidate
        r = rows[rows["candidate"] == c]
        if len(r) and np.isfinite(r["robust_sigma"][0]) and r["robust_sigma"][0] < best_s:
            best, best_s, best_n = c, float(r["robust_sigma"][0]), int(r["n"][0])
    return best, best_s, best_n


def select(metrics: Table, labels: Sequence[str], candidates: Sequence[str]) -> Table:
    """Selection table (one row per label x regime: label, regime, candidate,
    val_robust_sigma, val_n, basis) from the rows of ``metrics`` with split 'val' and
    snr_bin 'all'. A regime without validation stars falls back to the best candidate over
    all stars (basis 'all'); without any, to the first candidate (basis 'default')."""
    val = metrics[(metrics["split"] == "val") & (metrics["snr_bin"] == "all")]
    out = Table(names=("label", "regime", "candidate", "val_robust_sigma", "val_n", "basis"),
                dtype=("U16", "U16", "U32", "f8", "i8", "U16"))
    for lab in labels:
        for regime in REGIMES:
            rows = val[(val["label"] == lab) & (val["regime"] == regime)]
            best, s, n = _best(rows, candidates)
            basis = "regime"
            if best is None:
                best, s, n = _best(val[(val["label"] == lab) & (val["regime"] == "all")],
                                   candidates)
                basis = "all"
            if best is None:
                best, s, n, basis = candidates[0], np.nan, 0, "default"
            out.add_row((lab, regime, best, s, n, basis))
    return out


def selection_mapping(table: Table) -> dict[tuple[str, str], str]:
    """{(label, regime): candidate} from a selection table."""
    return {(str(r["label"]), str(r["regime"])): str(r["candidate"]) for r in table}
