"""``specbridge validate-real``: arguments of :mod:`specbridge.stages.validate_real`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import validate_real

    return validate_real.run(config_from_args(args),
                             {"model": args.model, "specformer": args.specformer},
                             {"table": args.output, "figure": args.figure}, set_name=args.set)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-real", help="real labelled LAMOST spectra vs the pretrained MLP",
                       description="Read, cross-match, preprocess and predict one set of real "
                                   "labelled LAMOST spectra (config real_validation) with the "
                                   "LAMOST-pretrained spectrum MLP; write predictions and "
                                   "reference labels side by side.")
    add_config_argument(p)
    p.add_argument("--set", required=True, help="name of a real_validation entry")
    p.add_argument("--model", required=True, help="pretrained spectrum-MLP checkpoint")
    p.add_argument("--specformer", help="pretrained SpecFormer checkpoint: out-of-domain "
                   "scores and the OOD_SPECTRUM flag (without it only label-space checks)")
    p.add_argument("--output", required=True, help="table (ECSV) to write")
    p.add_argument("--figure", help="one-to-one figure (PNG) to write")
    p.set_defaults(func=run)
