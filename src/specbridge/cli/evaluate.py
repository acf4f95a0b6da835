"""``specbridge evaluate``: arguments of :mod:`specbridge.stages.evaluate`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import evaluate

    inputs = {"checkpoints": args.checkpoints, "spectra": args.spectra,
              "embeddings": args.embeddings}
    outputs = {"metrics": args.metrics, "metrics_md": args.metrics_md,
               "selection": args.selection, "summary": args.summary,
               "predictions": args.predictions, "calibration": args.calibration}
    return evaluate.run(config_from_args(args), inputs, outputs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics per candidate and regime; selection table",
                       description="Robust sigma, bias, MAD, outliers and calibration of every "
                                   "candidate on the DESI validation and test splits, per "
                                   "label, regime and S/N bin, with bootstrap intervals; "
                                   "errors recalibrated on validation; the per-regime "
                                   "selection on the router's regimes (a regime's own "
                                   "candidate only beyond the paired interval) and the "
                                   "routed combination's test figures.")
    add_config_argument(p)
    p.add_argument("--checkpoints", nargs="+", required=True, help="candidate checkpoints")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed DESI spectra")
    p.add_argument("--embeddings", help="index HDF5 of DESI embeddings (embedding candidates)")
    p.add_argument("--metrics", required=True, help="metrics table (ECSV) to write")
    p.add_argument("--metrics-md", required=True, help="metrics tables (markdown) to write")
    p.add_argument("--selection", required=True, help="selection table (ECSV) to write")
    p.add_argument("--summary", required=True, help="answers table (ECSV) to write")
    p.add_argument("--calibration",
                   help="error recalibration table (ECSV) to write: scale and floor per "
                        "candidate and label, fitted on the validation split")
    p.add_argument("--predictions", required=True,
                   help="validation/test predictions (HDF5, for the report) to write")
    p.set_defaults(func=run)
