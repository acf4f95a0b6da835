"""Fine-tuning set-size sweep: test-split robust sigma of each strategy of the spectrum MLP
against the number of labelled DESI training spectra (a smaller set is a subset of a larger
one), on a finished run (default: results/).

    python benchmarks/finetune_sweep.py [--results results] [--sizes 200 500 1000]
        [--model mlp] [--ranks 1]

Each size fine-tunes the strategies with ``specbridge finetune --n-train N`` and evaluates them
with ``specbridge evaluate``; prints one markdown table per label.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from astropy.table import Table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--model", default="mlp", choices=["mlp", "emb_mlp"])
    ap.add_argument("--strategies", nargs="+", default=["adapter", "lora", "full"])
    ap.add_argument("--ranks", type=int, default=1)
    args = ap.parse_args(argv)
    res = args.results
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    cfg = str(res / "config" / "resolved.yaml")
    launch = [str(bindir / "mpiexec"), "-n", str(args.ranks)] if args.ranks > 1 else []
    src = ["--spectra", str(res / "preprocessed" / "desi" / "index.h5")]
    if args.model == "emb_mlp":
        src += ["--embeddings", str(res / "embeddings" / "desi" / "index.h5")]
    zeroshot = res / "models" / args.model / "finetuned_zeroshot.pt"
    rows: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.sizes:
            cks = [str(zeroshot)]
            for s in args.strategies:
                out = work / f"{n}" / f"{args.model}_{s}.pt"
                r = subprocess.run([*launch, "specbridge", "finetune", "--config", cfg,
                                    "--model", args.model, "--strategy", s, "--pretrained",
                                    str(res / "models" / args.model / "pretrained.pt"), *src,
                                    "--output", str(out), "--n-train", str(n)],
                                   capture_output=True, text=True, env=env)
                if r.returncode:
                    print(r.stderr[-2000:])
                    return 1
                cks.append(str(out))
            ev = work / f"{n}" / "ev"
            r = subprocess.run(["specbridge", "evaluate", "--config", cfg, "--checkpoints",
                                *cks, *src, "--metrics", str(ev / "m.ecsv"), "--metrics-md",
                                str(ev / "m.md"), "--selection", str(ev / "s.ecsv"),
                                "--summary", str(ev / "x.ecsv"), "--predictions",
                                str(ev / "p.h5")], capture_output=True, text=True, env=env)
            if r.returncode:
                print(r.stderr[-2000:])
                return 1
            m = Table.read(ev / "m.ecsv")
            m = m[(m["split"] == "test") & (m["regime"] == "all") & (m["snr_bin"] == "all")]
            for row in m:
                rows.setdefault((str(row["label"]), n), {})[str(row["candidate"])] = \
                    float(row["robust_sigma"])
            print(f"n_train {n} done", file=sys.stderr, flush=True)
    labels = sorted({k[0] for k in rows}, key=["teff", "logg", "feh", "alpha_fe"].index)
    cands = [f"{args.model}_zeroshot"] + [f"{args.model}_{s}" for s in args.strategies]
    for lab in labels:
        print(f"\n{lab}: test robust sigma vs fine-tuning set size\n")
        print("| n_train | " + " | ".join(cands) + " |")
        print("|---|" + "---|" * len(cands))
        for n in args.sizes:
            vals = rows[(lab, n)]
            print(f"| {n} | " + " | ".join(f"{vals.get(c, float('nan')):.4g}" for c in cands)
                  + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
