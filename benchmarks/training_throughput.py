"""Training throughput (samples/s per rank) of the spectrum MLP and the SpecFormer on CPU with 1
and 2 ranks (mpiexec), on the preprocessed LAMOST set of a finished run (default: results/).

    python benchmarks/training_throughput.py [--results results] [--epochs 2]
        [--specformer-size demo|benchmark|paper] [--models mlp specformer]

SpecFormer sizes: ``demo`` is the run's own (the embedded default), ``benchmark`` and
``paper`` the overlays in config/sizes/.

Each run trains ``--epochs`` epochs with the one training loop and reports the mean of the
per-epoch samples/s per rank after the first epoch (the loop logs it every epoch).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SIZES = ("demo", "benchmark", "paper")
ROOT = Path(__file__).resolve().parents[1]


def specformer_size(size: str) -> dict:
    """models.specformer of the size's overlay (empty for the run's own size)."""
    if size == "demo":
        return {}
    overlay = yaml.safe_load((ROOT / "config" / "sizes" / f"{size}.yaml").read_text())
    return overlay["models"]["specformer"]


def run(model: str, ranks: int, results: Path, cfg: Path, epochs: int, work: Path) -> float:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    cmd = ["specbridge", "pretrain", "--config", str(cfg), "--model", model, "--spectra",
           str(results / "preprocessed" / "lamost" / "index.h5"), "--output",
           str(work / f"{model}-{ranks}.pt"), "--epochs", str(epochs)]
    if ranks > 1:
        cmd = [str(bindir / "mpiexec"), "-n", str(ranks), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    rates = [float(x) for x in re.findall(r"([\d.]+) samples/s per rank", r.stderr)]
    later = rates[1:] or rates
    return sum(later) / len(later)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--specformer-size", choices=SIZES, default="demo")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=["mlp", "specformer"],
                    choices=["mlp", "specformer"])
    args = ap.parse_args(argv)
    cfg = yaml.safe_load((args.results / "config" / "resolved.yaml").read_text())
    size = specformer_size(args.specformer_size)
    cfg["models"]["specformer"].update(size)
    cfg["training"]["batch_size"] = args.batch
    cfg["training"]["patience"] = 100
    cfg["training"]["specformer"] = {**cfg["training"].get("specformer", {}),
                                     "batch_size": args.batch, "patience": 100}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "c.yaml").write_text(yaml.safe_dump(cfg))
        print(f"global batch {args.batch}; SpecFormer {args.specformer_size} "
              f"{size or cfg['models']['specformer']}; samples/s per rank")
        print("| model | 1 rank (all threads) | 2 ranks, per rank | 2 ranks, total |")
        print("|---|---|---|---|")
        for model in args.models:
            one = run(model, 1, args.results, work / "c.yaml", args.epochs, work / "a")
            two = run(model, 2, args.results, work / "c.yaml", args.epochs, work / "b")
            print(f"| {model} | {one:,.0f} | {two:,.0f} | {2 * two:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
