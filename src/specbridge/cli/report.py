"""``specbridge report``: arguments of :mod:`specbridge.stages.report`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import report

    inputs = {"metrics": args.metrics, "selection": args.selection, "summary": args.summary,
              "predictions": args.predictions, "vac": args.vac, "real": args.real,
              "scoreboard": args.scoreboard, "calibration": args.calibration,
              "specformer": args.specformer, "label_efficiency": args.label_efficiency}
    return report.run(config_from_args(args), inputs, {"page": args.output})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and tables of the evaluation and the VAC",
                       description="One HTML page: the answers (fine-tuning vs zero-shot, "
                                   "routing vs single candidates), the selection, one-to-one "
                                   "plots, residuals vs [Fe/H], per-regime tables, and the "
                                   "catalogue's overview; figures written beside it.")
    add_config_argument(p)
    p.add_argument("--metrics", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--predictions", required=True, help="predictions.h5 of evaluate")
    p.add_argument("--calibration", help="error recalibration table (ECSV) of evaluate")
    p.add_argument("--vac", required=True, help="merged VAC FITS file")
    p.add_argument("--real", nargs="*", help="tables of validate-real (real LAMOST sets)")
    p.add_argument("--scoreboard", help="scoreboard of the real sets (ECSV of scoreboard)")
    p.add_argument("--specformer", help="pretrained SpecFormer checkpoint (its embedding "
                   "quality and out-of-domain settings are shown)")
    p.add_argument("--label-efficiency", metavar="ECSV",
                   help="label_efficiency.ecsv of benchmarks/label_efficiency.py (its figure "
                        "beside it): shown as its own section")
    p.add_argument("--output", required=True, help="report HTML page (figures beside it)")
    p.set_defaults(func=run)
