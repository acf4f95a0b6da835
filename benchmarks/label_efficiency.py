"""Label efficiency: the spectrum MLP and the MLP on SpecFormer embeddings trained on N labelled
LAMOST spectra (the SpecFormer pretrained once, on every LAMOST spectrum, labelled or not),
then zero-shot and fine-tuned on mock DESI, per label and regime, with bootstrap intervals.

    python benchmarks/label_efficiency.py --results RUN --specformer SF.pt \\
        --embeddings EMB [--config RUN/config/resolved.yaml] [--sizes 250 500 1000 2000 0]
        [--strategy lora] [--n-boot 1000] [--out RUN/benchmarks/label_efficiency]

RUN is a finished run (its preprocessed LAMOST and DESI spectra); EMB holds the SpecFormer's
embeddings of both surveys (EMB/lamost/index.h5, EMB/desi/index.h5; ``specbridge embed``;
with ``training.snr_augment`` on in the config, LAMOST's with ``--degraded-snr-min`` its
``snr_min``).
Size 0 is every labelled training spectrum. For each N the supervised models are pretrained
with ``specbridge pretrain --n-labelled N`` (the same stars for both: a hash of the star picks
them, a smaller set a subset of a larger one), fine-tuned with ``specbridge finetune``
(``zeroshot`` and ``--strategy``) on the run's DESI training split and scored by ``specbridge
evaluate`` on its test split. Writes label_efficiency.ecsv (every figure with its 95 %
interval over stars), label_efficiency.md and label_efficiency.png into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from specbridge.evaluation.bootstrap import bootstrap_interval, paired_ratio
from specbridge.labels import unit
from specbridge.splits import SPLIT_CODES

MODELS = ("mlp", "emb_mlp")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-3000:]}")


def train_and_score(n: int, args: argparse.Namespace, work: Path, env: dict[str, str]) -> Path:
    """Pretrain both models on N labelled spectra, fine-tune, evaluate; the predictions file."""
    res, emb = args.results, args.embeddings
    lamost = str(res / "preprocessed" / "lamost" / "index.h5")
    desi = str(res / "preprocessed" / "desi" / "index.h5")
    cfg = str(args.config)
    d = work / f"n{n}"
    cks = []
    for model in MODELS:
        src = ["--embeddings", str(emb / "lamost" / "index.h5")] if model == "emb_mlp" else []
        pre = d / f"{model}_pretrained.pt"
        _run(["specbridge", "pretrain", "--config", cfg, "--model", model, "--spectra", lamost,
              *src, "--holdout", desi, "--output", str(pre),
              *(["--n-labelled", str(n)] if n else [])], env)
        dsrc = ["--embeddings", str(emb / "desi" / "index.h5")] if model == "emb_mlp" else []
        for strategy in ("zeroshot", args.strategy):
            out = d / f"{model}_{strategy}.pt"
            _run(["specbridge", "finetune", "--config", cfg, "--model", model, "--strategy",
                  strategy, "--pretrained", str(pre), "--spectra", desi, *dsrc,
                  "--output", str(out)], env)
            cks.append(str(out))
    ev = d / "evaluation"
    _run(["specbridge", "evaluate", "--config", cfg, "--checkpoints", *cks, "--spectra", desi,
          "--embeddings", str(emb / "desi" / "index.h5"), "--metrics", str(ev / "m.ecsv"),
          "--metrics-md", str(ev / "m.md"), "--selection", str(ev / "s.ecsv"), "--summary",
          str(ev / "x.ecsv"), "--predictions", str(ev / "p.h5")], env)
    return ev / "p.h5"


def n_labelled(checkpoint: Path) -> int:
    """Labelled training spectra a pretrained checkpoint saw (its metadata)."""
    from specbridge.models.checkpoint import load_checkpoint

    meta = load_checkpoint(checkpoint).meta
    return int(meta["n_train_spectra"])


def score(pred_file: Path, strategy: str, threshold: float, n_boot: int) -> list[dict]:
    """Rows of the table for one N: per strategy, label and regime, both models' test robust
    sigma and their ratio (embedding / spectrum), each with its 95 % interval over stars."""
    with h5py.File(pred_file, "r") as h:
        labels = [str(v) for v in h.attrs["labels"]]
        test = h["split"][()] == SPLIT_CODES["test"]
        ref = h["ref"][()][test]
        star = h["star"][()][test]
        preds = {k: h[k]["value"][()][test] for k in h if isinstance(h[k], h5py.Group)}
    feh = ref[:, labels.index("feh")]
    regimes = {"all": np.ones(len(feh), bool), "metal-poor": feh <= threshold,
               "metal-rich": feh > threshold}
    rows = []
    for strat in ("zeroshot", strategy):
        for i, lab in enumerate(labels):
            for reg, m in regimes.items():
                a = preds[f"emb_mlp_{strat}"][m, i] - ref[m, i]
                b = preds[f"mlp_{strat}"][m, i] - ref[m, i]
                row = {"strategy": strat, "label": lab, "unit": unit(lab),
                       "regime": reg, "n_test": int(m.sum())}
                for name, r in (("spectrum", b), ("embedding", a)):
                    est, lo, hi = bootstrap_interval("robust_sigma", r, groups=star[m],
                                                     n_boot=n_boot, level=0.95, seed=0)
                    row |= {f"sigma_{name}": est, f"sigma_{name}_lo": lo,
                            f"sigma_{name}_hi": hi}
                q = paired_ratio("robust_sigma", a, b, groups=star[m], n_boot=n_boot,
                                 level=0.95, seed=0)
                row |= {"ratio": q.ratio, "ratio_lo": q.lo, "ratio_hi": q.hi,
                        "embedding_better": q.verdict}
                rows.append(row)
    return rows


def markdown(table) -> str:
    """One markdown table per strategy: rows N x label, columns the regimes."""
    out = []
    for strat in dict.fromkeys(table["strategy"]):
        t = table[table["strategy"] == strat]
        out += [f"\n**{strat}**: robust sigma on the DESI test split, spectrum MLP | embedding "
                "MLP, and their ratio (embedding / spectrum) with its 95 % interval over "
                "stars\n",
                "| N labelled | label | all: spectrum, embedding | all: ratio | metal-poor: "
                "ratio | metal-rich: ratio |", "|---|---|---|---|---|---|"]
        for n in dict.fromkeys(t["n_labelled"]):
            for lab in dict.fromkeys(t["label"]):
                sel = t[(t["n_labelled"] == n) & (t["label"] == lab)]
                by = {str(r["regime"]): r for r in sel}
                a = by["all"]
                cells = [f"{a['sigma_spectrum']:.3g}, {a['sigma_embedding']:.3g}"]
                for reg in ("all", "metal-poor", "metal-rich"):
                    r = by[reg]
                    cells.append(f"{r['ratio']:.2f} [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]"
                                 f" (n {r['n_test']})")
                out.append(f"| {n:,} | {lab} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def figure(table, path: Path) -> None:
    """Ratio (embedding / spectrum) against N per label: one panel per strategy, one line per
    regime, 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strats = list(dict.fromkeys(table["strategy"]))
    labels = list(dict.fromkeys(table["label"]))
    fig, axes = plt.subplots(len(strats), len(labels), figsize=(3.2 * len(labels),
                                                                 2.8 * len(strats)),
                             squeeze=False, sharex=True)
    for i, strat in enumerate(strats):
        for j, lab in enumerate(labels):
            ax = axes[i, j]
            for k, (reg, colour) in enumerate((("metal-poor", "C0"), ("metal-rich", "C3"),
                                               ("all", "k"))):
                t = table[(table["strategy"] == strat) & (table["label"] == lab)
                          & (table["regime"] == reg)]
                x = np.asarray(t["n_labelled"], float) * (1 + 0.04 * (k - 1))
                y = np.asarray(t["ratio"])
                err = [y - np.asarray(t["ratio_lo"]), np.asarray(t["ratio_hi"]) - y]
                ax.errorbar(x, y, yerr=err, marker="o", ms=3, color=colour, label=reg,
                            capsize=2)
            ax.axhline(1, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log")
            ns = sorted(set(np.asarray(table["n_labelled"]).tolist()))
            ax.set_xticks(ns, [f"{n:,}" for n in ns], fontsize=7, rotation=45)
            ax.minorticks_off()
            ax.set_title(f"{lab}, {strat}", fontsize=9)
            if j == 0:
                ax.set_ylabel("sigma embedding / spectrum")
            if i == len(strats) - 1:
                ax.set_xlabel("labelled LAMOST spectra")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--specformer", type=Path, help="(recorded only) the SpecFormer checkpoint "
                    "whose embeddings --embeddings holds")
    ap.add_argument("--embeddings", type=Path, required=True)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 0])
    ap.add_argument("--strategy", default="lora", choices=["adapter", "lora", "full"])
    ap.add_argument("--threshold", type=float,
                    help="[Fe/H] of the regimes (default: the config's evaluation.feh_threshold)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, help="keep the checkpoints here (default: temporary)")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the table and figure from --out's label_efficiency.ecsv")
    args = ap.parse_args(argv)
    from astropy.table import Table

    if args.replot:
        table = Table.read(args.out / "label_efficiency.ecsv", format="ascii.ecsv")
        (args.out / "label_efficiency.md").write_text(markdown(table))
        figure(table, args.out / "label_efficiency.png")
        return 0

    args.config = args.config or args.results / "config" / "resolved.yaml"
    if args.threshold is None:
        from specbridge.config import load_config

        args.threshold = load_config(args.config)["evaluation"]["feh_threshold"]
    out = args.out or args.results / "benchmarks" / "label_efficiency"
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for n in args.sizes:
            t0 = time.monotonic()
            pred = train_and_score(n, args, work, env)
            used = n_labelled(work / f"n{n}" / "mlp_pretrained.pt")
            if used != n_labelled(work / f"n{n}" / "emb_mlp_pretrained.pt"):
                raise SystemExit(f"N {n}: the two models saw different labelled sets")
            for r in score(pred, args.strategy, args.threshold, args.n_boot):
                rows.append({"n_labelled": used, **r})
            print(f"N {n or 'all'} ({used} labelled training spectra) done in "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    table = Table(rows=rows)
    table.meta = {"specformer": str(args.specformer), "embeddings": str(args.embeddings),
                  "results": str(args.results), "threshold_feh": args.threshold,
                  "level": 0.95, "n_boot": args.n_boot}
    table.write(out / "label_efficiency.ecsv", format="ascii.ecsv", overwrite=True)
    text = markdown(table)
    (out / "label_efficiency.md").write_text(text)
    figure(table, out / "label_efficiency.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
