"""``specbridge scoreboard``: arguments of :mod:`specbridge.stages.scoreboard`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import scoreboard

    return scoreboard.run(config_from_args(args), {"real": args.real or []},
                          {"table": args.output, "markdown": args.markdown},
                          n_boot=args.n_boot, seed=args.seed)


def register(sub: argparse._SubParsersAction) -> None:
    from specbridge.stages.scoreboard import N_BOOT, SEED

    p = sub.add_parser("scoreboard", help="real labelled sets: bias and robust sigma with "
                                          "bootstrap intervals",
                       description="For every real labelled LAMOST set (tables of "
                                   "validate-real), label, S/N bin and [Fe/H] regime: bias "
                                   "and robust sigma of the predictions against the set's "
                                   "reference labels, each with its 68 %% bootstrap interval "
                                   "over stars, and the share of labelled spectra with a "
                                   "prediction. One table per run, and its markdown.")
    add_config_argument(p)
    p.add_argument("--real", nargs="*", default=[],
                   help="tables of validate-real (none: an empty scoreboard)")
    p.add_argument("--output", required=True, help="scoreboard table (ECSV) to write")
    p.add_argument("--markdown", help="scoreboard (markdown) to write")
    p.add_argument("--n-boot", type=int, default=N_BOOT,
                   help="bootstrap resamplings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the resampling (default: %(default)s)")
    p.set_defaults(func=run)
