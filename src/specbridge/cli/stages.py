"""Subcommands of the pipeline stages.

A stage whose implementation has not landed yet exits with status 3 and says so: it never
writes an output that could pass for a real one.
"""

from __future__ import annotations

import argparse
import sys

from specbridge.cli._common import add_config_argument

NOT_IMPLEMENTED = 3


def _not_implemented(stage: str, issue: str):
    def run(args: argparse.Namespace) -> int:
        print(f"specbridge {stage}: not implemented yet ({issue}); no output was written",
              file=sys.stderr)
        return NOT_IMPLEMENTED

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and tables of the evaluation and the VAC",
                       description="One-to-one plots, residuals vs [Fe/H], per-regime tables.")
    add_config_argument(p)
    p.add_argument("--metrics", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--vac", required=True)
    p.add_argument("--output", required=True, help="report HTML page (figures beside it)")
    p.set_defaults(func=_not_implemented("report", "end to end"))
