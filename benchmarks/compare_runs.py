"""Two runs of the pipeline on the same mock (e.g. before and after a change), candidate by
candidate on the same DESI stars (the test split unless ``--split val``): robust sigma of each
and the paired difference (after - before) with a 95 % bootstrap interval over stars.

    python benchmarks/compare_runs.py BEFORE_RESULTS AFTER_RESULTS [--candidates routed mlp_lora]
        [--split test]

``--split val`` compares on the validation stars, the split on which choices are made.

Reads each run's evaluation/predictions.h5; the stars are matched by SPECID (both runs
must be of the same mock). Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from specbridge.evaluation.bootstrap import paired_difference
from specbridge.evaluation.metrics import robust_sigma
from specbridge.splits import SPLIT_CODES
from specbridge.stages.evaluate import star_keys


def read(results: Path, names: list[str], split: str = "test") -> dict[str, Any]:
    """The ``split``'s specid, star key (for the bootstrap), ref (n, n_labels) and each
    candidate's value (n, n_labels), and the run's label names ('labels')."""
    with h5py.File(results / "evaluation" / "predictions.h5", "r") as h:
        rows = h["split"][()] == SPLIT_CODES[split]
        out: dict[str, Any] = {k: h[k][()][rows] for k in ("specid", "ref")
                               + (("star",) if "star" in h else ())}
        out["star"] = star_keys(out)
        out["labels"] = [str(x) for x in h.attrs["labels"]]
        for c in names:
            out[c] = h[f"{c}/value"][()][rows]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--candidates", nargs="+", default=["routed", "mlp_lora",
                                                        "specformer_lora"])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--split", choices=("val", "test"), default="test")
    args = ap.parse_args(argv)
    a = read(args.before, args.candidates, args.split)
    b = read(args.after, args.candidates, args.split)
    if a["labels"] != b["labels"]:
        raise SystemExit(f"the runs predict different labels: {a['labels']} / {b['labels']}")
    common, ia, ib = np.intersect1d(a["specid"], b["specid"], return_indices=True)
    print(f"{common.size} {args.split} spectra in both runs\n")
    print("| candidate | label | before | after | after - before (95 %) | better |")
    print("|---|---|---|---|---|---|")
    for c in args.candidates:
        for j, lab in enumerate(a["labels"]):
            ra = a[c][ia, j] - a["ref"][ia, j]
            rb = b[c][ib, j] - b["ref"][ib, j]
            d = paired_difference("robust_sigma", rb, ra, groups=a["star"][ia],
                                  n_boot=args.n_boot, level=0.95)
            ok = np.isfinite(ra) & np.isfinite(rb)
            print(f"| {c} | {lab} | {robust_sigma(ra[ok]):.3g} | {robust_sigma(rb[ok]):.3g} | "
                  f"{d.difference:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}] | {d.verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
