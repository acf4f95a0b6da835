"""The mock's domain-gap ablation (issue #14): zero-shot and fine-tuned robust sigma per label
and [Fe/H] regime on the DESI test split, for a mock with no survey effect, each effect
alone, and all of them, each configuration run through the pipeline itself (snakemake:
mock -> manifests -> preprocessing -> MLP pretraining on LAMOST -> fine-tuning -> evaluation).

    python benchmarks/mock_ablation.py [--workdir results/ablation] [--configs none all ...]
        [--n-lamost 2000] [--n-desi 2000] [--epochs 8] [--strategy lora] [--cores 2]
        [--table docs-table.md]

Only the spectrum MLP is trained (``finetune.models: [mlp]``, strategies zeroshot and one
fine-tuning strategy, no SpecFormer), at a reduced size; everything else is the embedded
default (config.yaml), including the mock's resolution, residual and overlap settings. A
configuration whose predictions exist is not rerun (snakemake decides). Intervals: percentile
bootstrap over stars (:func:`specbridge.evaluation.bootstrap.bootstrap_interval`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from specbridge.evaluation.bootstrap import bootstrap_interval
from specbridge.mock.effects import EFFECT_NAMES
from specbridge.splits import TEST

REPO = Path(__file__).resolve().parents[1]
LABELS = ("teff", "logg", "feh", "alpha_fe")
UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "alpha_fe": "dex"}
#: (name, test) of the regimes reported, by the reference [Fe/H]
REGIMES = (("all", lambda feh: np.isfinite(feh)), ("[Fe/H] > -1", lambda feh: feh > -1.0),
           ("[Fe/H] <= -1", lambda feh: feh <= -1.0))


def configurations() -> dict[str, tuple[str, ...]]:
    """Ablation name -> the survey effects switched on: none, each alone, all."""
    return {"none": (), **{name: (name,) for name in EFFECT_NAMES}, "all": EFFECT_NAMES}


def ablation_config(outdir: Path, enabled: tuple[str, ...], args: argparse.Namespace,
                    ) -> dict[str, Any]:
    """The snakemake configfile (merged over config.yaml) of one configuration."""
    mock: dict[str, Any] = {"n_lamost": args.n_lamost, "n_lamost_unlabelled": 0,
                            "n_desi": args.n_desi, "n_overlap": args.n_overlap}
    mock.update({name: {"enabled": name in enabled} for name in EFFECT_NAMES})
    return {
        "outdir": str(outdir), "seed": args.seed,
        "data": {"mock": mock},
        "training": {"epochs": args.epochs, "patience": 3},
        "finetune": {"models": ["mlp"], "strategies": ["zeroshot", args.strategy],
                     "n_train": args.n_train, "epochs": args.ft_epochs,
                     "lora": {"specformer": False}},
        # the pipeline's own tables are not read here: fewer replicates keep evaluate short
        "evaluation": {"bootstrap": {"n_boot": 200}},
    }


def run_configuration(name: str, enabled: tuple[str, ...], args: argparse.Namespace,
                      ) -> tuple[Path, float]:
    """Run the pipeline up to the evaluation for one configuration; returns the predictions
    file and the wall time (s)."""
    outdir = (args.workdir / name).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_path = outdir / "ablation.yaml"
    cfg_path.write_text(yaml.safe_dump(ablation_config(outdir, enabled, args)))
    target = outdir / "evaluation" / "predictions.h5"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    with open(outdir / "snakemake.log", "w") as log:
        r = subprocess.run([str(bindir / "snakemake"), str(target), "--cores", str(args.cores),
                            "--configfile", str(cfg_path)],
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{name}: snakemake failed (see {outdir / 'snakemake.log'})")
    return target, time.perf_counter() - t0


def scores(predictions: Path, strategy: str, n_boot: int, level: float,
           ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{candidate: {label: {regime: [robust sigma, lo, hi, n]}}} on the test split of a
    predictions file, residual = prediction - catalogue label, resampled by star."""
    with h5py.File(predictions, "r") as h:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in h.attrs["labels"]]
        split = h["split"][:]
        ref = h["ref"][:]
        star = h["star"][:] if "star" in h else h["specid"][:]
        preds = {c: h[f"mlp_{c}/value"][:] for c in ("zeroshot", strategy)}
    test = split == TEST
    feh = ref[:, names.index("feh")]
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for cand, value in preds.items():
        out[cand] = {}
        for lab in LABELS:
            j = names.index(lab)
            out[cand][lab] = {}
            for regime, sel in REGIMES:
                m = test & sel(feh)
                iv = bootstrap_interval("robust_sigma", value[m, j] - ref[m, j],
                                        groups=star[m], n_boot=n_boot, level=level, seed=0)
                out[cand][lab][regime] = [iv[0], iv[1], iv[2], int(m.sum())]
    return out


def _fmt(v: list[float], lab: str) -> str:
    digits = 0 if lab == "teff" else 3
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def markdown(results: dict[str, dict[str, Any]], strategy: str, level: float) -> str:
    """One markdown table per label: rows = configurations, columns = candidate x regime."""
    lines = []
    regimes = [r for r, _ in REGIMES]
    for lab in LABELS:
        lines += [f"**{lab}** ({UNITS[lab]}; robust sigma [{level:.0%} interval]; test stars "
                  "all / [Fe/H] > -1 / <= -1)", "",
                  "| effects | n test | " + " | ".join(f"zero-shot {r}" for r in regimes)
                  + " | " + " | ".join(f"{strategy} {r}" for r in regimes) + " |",
                  "|---|---|" + "---|" * (2 * len(regimes))]
        for name, res in results.items():
            s = res["scores"]
            n = "/".join(str(s["zeroshot"][lab][r][3]) for r in regimes)
            cells = [_fmt(s[c][lab][r], lab) for c in ("zeroshot", strategy) for r in regimes]
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "results" / "ablation")
    ap.add_argument("--configs", nargs="+", default=list(configurations()),
                    choices=list(configurations()))
    ap.add_argument("--n-lamost", type=int, default=2000)
    ap.add_argument("--n-desi", type=int, default=2000)
    ap.add_argument("--n-overlap", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=10)
    ap.add_argument("--strategy", default="lora", choices=["adapter", "lora", "full"])
    ap.add_argument("--seed", type=int, default=20260215)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--table", type=Path, default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        enabled = configurations()[name]
        pred, wall = run_configuration(name, enabled, args)
        results[name] = {"effects": list(enabled), "wall_s": wall,
                         "scores": scores(pred, args.strategy, args.n_boot, args.level)}
        print(f"{name}: {wall:.0f} s", flush=True)
        (args.workdir / "ablation.json").write_text(json.dumps(results, indent=1))
    table = markdown(results, args.strategy, args.level)
    print(table)
    if args.table is not None:
        args.table.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
