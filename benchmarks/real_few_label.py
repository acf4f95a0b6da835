"""Calibration on a few real labels (issue #16): the LAMOST-pretrained spectrum MLP fine-tuned
with each strategy on half of a small real labelled LAMOST set, against zero-shot, on the
other half.

    python benchmarks/real_few_label.py [--results results] [--set dr1_pilot] [--out DIR]

The set's preprocessed spectra (``results/real/<set>/preprocessed``, written by the run's
``validate_real`` rule, with the catalogue labels and their errors) are split by star with the
pipeline's own hash: 25 % validation (early stopping), 50 % test, the rest training. Each
strategy runs ``specbridge finetune`` exactly as on DESI (the run's config, with the batch
size lowered to 16 so that a few dozen stars make batches), then every candidate predicts the
test half. Reported per label: bias and robust sigma with 68 % bootstrap intervals over test
stars, and each strategy's paired difference from zero-shot (|bias| and robust sigma; "yes":
better beyond the interval). One split of a small set: the intervals cover the test stars'
sampling, not the choice of the training stars.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import yaml

STRATEGIES = ("zeroshot", "adapter", "lora", "full")
VAL_FRACTION, TEST_FRACTION = 0.25, 0.5


def finetune_all(results: Path, index: Path, out: Path) -> dict[str, Path]:
    """Run ``specbridge finetune`` for every strategy on ``index``; candidate paths."""
    cfg = yaml.safe_load((results / "config" / "resolved.yaml").read_text())
    cfg["finetune"] = {**cfg["finetune"], "val_fraction": VAL_FRACTION,
                       "test_fraction": TEST_FRACTION, "n_train": 100_000}
    cfg["training"] = {**cfg["training"], "batch_size": 16}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    cands = {}
    for s in STRATEGIES:
        cands[s] = out / f"mlp_{s}.pt"
        log = out / f"finetune_{s}.log"
        with open(log, "w") as fh:
            rc = subprocess.run(["specbridge", "finetune", "--config", str(out / "config.yaml"),
                                 "--model", "mlp", "--strategy", s, "--pretrained",
                                 str(results / "models" / "mlp" / "pretrained.pt"), "--spectra",
                                 str(index), "--output", str(cands[s])],
                                stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc:
            raise SystemExit(f"finetune {s} failed ({log}): "
                             + log.read_text().strip().splitlines()[-1])
    return cands


def evaluate(index: Path, cands: dict[str, Path]) -> list[str]:
    """Markdown table of the candidates on the test half of ``index``."""
    from specbridge import flags
    from specbridge.evaluation.bootstrap import bootstrap_interval, paired_difference
    from specbridge.inference.predict import load_candidates, predict, read_inputs
    from specbridge.io.shards import read_index
    from specbridge.splits import SPLIT_CODES, assign_split

    loaded = load_candidates(list(cands.values()))
    parts = [read_inputs(sh, {"flux"}) for sh in read_index(str(index))]
    d = {k: np.concatenate([p[k] for p in parts])
         for k in ("star", "labels", "flags", "flux", "usable")}
    split = assign_split(d["star"], VAL_FRACTION, TEST_FRACTION)
    n_stars = {k: np.unique(d["star"][split == c]).size for k, c in SPLIT_CODES.items()}
    bad_label = flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
    test = (split == SPLIT_CODES["test"]) & d["usable"] & ((d["flags"] & bad_label) == 0)
    labels = loaded[0].labels
    pred = {c.strategy: predict(c, d["flux"][test], np.ones(int(test.sum()), bool))[0]
            for c in loaded}
    ref, star = d["labels"][test], d["star"][test]
    out = [f"{n_stars['train']} training, {n_stars['val']} validation, {n_stars['test']} test "
           "stars", "",
           "| label | strategy | n | bias [68 %] | robust sigma [68 %] | Δ|bias| vs zero-shot "
           "| Δsigma vs zero-shot |", "|---|---|---|---|---|---|---|"]
    for i, lab in enumerate(labels):
        if not np.isfinite(ref[:, i]).any():
            continue
        r0 = pred["zeroshot"][:, i] - ref[:, i]
        for s in STRATEGIES:
            r = pred[s][:, i] - ref[:, i]
            b = bootstrap_interval("bias", r, groups=star)
            sg = bootstrap_interval("robust_sigma", r, groups=star)
            cells = []
            for stat, better in (("bias", "closer_to_zero"), ("robust_sigma", "lower")):
                if s == "zeroshot":
                    cells.append("-")
                    continue
                p = paired_difference(stat, r, r0, groups=star, better=better)
                cells.append(f"{p.difference:+.3g} [{p.lo:+.3g}, {p.hi:+.3g}] {p.verdict}")
            out.append(f"| {lab} | {s} | {int(np.isfinite(r).sum())} | {b.estimate:+.3g} "
                       f"[{b.lo:+.3g}, {b.hi:+.3g}] | {sg.estimate:.3g} [{sg.lo:.3g}, "
                       f"{sg.hi:.3g}] | {cells[0]} | {cells[1]} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--set", default="dr1_pilot", help="a real_validation set of the run")
    p.add_argument("--out", type=Path, default=None,
                   help="work folder (default results/benchmarks/real_few_label/<set>)")
    a = p.parse_args()
    index = a.results / "real" / a.set / "preprocessed" / "index.h5"
    out = a.out or a.results / "benchmarks" / "real_few_label" / a.set
    print("\n".join(evaluate(index, finetune_all(a.results, index, out))))


if __name__ == "__main__":
    main()
