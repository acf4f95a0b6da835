"""The paper's question on the embedded default's test split: is an MLP on SpecFormer embeddings
as good as the MLP on the spectrum? For each strategy, the ratio of robust sigma (embedding
candidate / spectrum candidate with the same strategy; ``specformer_lora`` against
``mlp_lora``) per label, on all test stars and per regime of the reference [Fe/H], with a 95 %
bootstrap interval over stars (both candidates on the same resampled stars).

    python benchmarks/embedding_vs_spectrum.py [--results results] [--n-boot 1000]
        [--snr-bins 0 10 20 1000] [--split test]

With ``--snr-bins`` the columns are S/N bins (the catalogue S/N, per pixel of the spectrum as
observed) instead of the regimes: is the gap the noise (it would close at high S/N) or the
domain (it would not)?

Reads results/evaluation/predictions.h5 (written by ``specbridge evaluate``); prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from specbridge.evaluation.bootstrap import bootstrap_interval
from specbridge.evaluation.metrics import robust_sigma
from specbridge.splits import SPLIT_CODES

PAIRS = (("emb_mlp_zeroshot", "mlp_zeroshot"), ("emb_mlp_adapter", "mlp_adapter"),
         ("emb_mlp_lora", "mlp_lora"), ("emb_mlp_full", "mlp_full"),
         ("specformer_lora", "mlp_lora"))


def ratio(a: np.ndarray, b: np.ndarray) -> float:
    """robust sigma of residuals a over that of residuals b (same rows)."""
    return robust_sigma(a) / robust_sigma(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=-1.0, help="[Fe/H] of the regimes")
    ap.add_argument("--split", choices=("val", "test"), default="test",
                    help="the DESI split scored (val: the one choices are made on)")
    ap.add_argument("--snr-bins", type=float, nargs="+", metavar="SNR",
                    help="S/N bin edges: columns by S/N instead of by regime")
    args = ap.parse_args(argv)
    if args.snr_bins is not None and (len(args.snr_bins) < 2
                                      or np.any(np.diff(args.snr_bins) <= 0)):
        ap.error("--snr-bins needs at least two increasing edges")
    with h5py.File(args.results / "evaluation" / "predictions.h5", "r") as h:
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in h.attrs["labels"]]
        test = h["split"][()] == SPLIT_CODES[args.split]
        ref = h["ref"][()][test]
        star = h["star"][()][test]
        snr = h["snr"][()][test]
        preds = {k: h[k]["value"][()][test] for k in h if isinstance(h[k], h5py.Group)}
    feh = ref[:, labels.index("feh")]
    regimes = {"all": np.ones(len(feh), bool), "[Fe/H] <= -1": feh <= args.threshold,
               "[Fe/H] > -1": feh > args.threshold}
    if args.snr_bins:
        e = args.snr_bins
        regimes = {"all": np.ones(len(feh), bool),
                   **{f"S/N {a:g}-{b:g}": (snr >= a) & (snr < b)
                      for a, b in zip(e[:-1], e[1:], strict=True)}}
    print(f"{args.split} split: {len(feh)} spectra; robust sigma ratio (embedding / spectrum) "
          f"with its 95 % bootstrap interval over stars ({args.n_boot} resamplings)\n")
    print("| candidate / reference | label | " + " | ".join(regimes) + " |")
    print("|---|---|" + "---|" * len(regimes))
    for emb, spec in PAIRS:
        if emb not in preds or spec not in preds:
            continue
        for i, lab in enumerate(labels):
            cells = []
            for m in regimes.values():
                if m.sum() < 2:
                    cells.append(f"- (n {int(m.sum())})")
                    continue
                a = preds[emb][m, i] - ref[m, i]
                b = preds[spec][m, i] - ref[m, i]
                est, lo, hi = bootstrap_interval(ratio, a, b, groups=star[m],
                                                 n_boot=args.n_boot, level=0.95, seed=0)
                cells.append(f"{est:.2f} [{lo:.2f}, {hi:.2f}] (n {int(m.sum())})")
            print(f"| {emb} / {spec} | {lab} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
