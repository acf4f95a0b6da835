"""``specbridge <stage> ...``: one subcommand per workflow rule, each usable without Snakemake."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from specbridge import __version__
from specbridge.cli import (
    checks,
    embed,
    evaluate,
    finetune,
    infer,
    manifest,
    mock,
    preprocess,
    pretrain,
    report,
    scoreboard,
    vac,
    validate_real,
)
from specbridge.cli._common import CLIError
from specbridge.config import ConfigError
from specbridge.errors import UserError, describe, quiet_cleanup_errors
from specbridge.io.fitsutil import FormatError

# Each module contributes subcommands through register(subparsers).
_COMMAND_MODULES = (mock, manifest, preprocess, pretrain, embed, finetune, evaluate, infer,
                    vac, report, validate_real, scoreboard,
                    checks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specbridge",
        description="Stellar parameters for survey spectra: LAMOST-pretrained models "
                    "transferred to DESI, written as a value-added catalogue. Each subcommand "
                    "is one stage of the Snakemake workflow and can be run by hand.",
    )
    parser.add_argument("--version", action="version", version=f"specbridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``specbridge`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    sys.unraisablehook = quiet_cleanup_errors
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CLIError, FormatError, UserError) as err:
        print(f"specbridge {args.command}: error: {err}", file=sys.stderr)
        _leave_if_hdf5_is_stuck(2)
        return 2
    except OSError as err:  # disk full, permission, a vanished file: one line, no stack
        where = f"{err.filename}: " if err.filename else ""
        print(f"specbridge {args.command}: error: {where}{describe(err)}", file=sys.stderr)
        logging.getLogger("specbridge").debug("traceback", exc_info=True)
        _leave_if_hdf5_is_stuck(2)
        return 2


def _leave_if_hdf5_is_stuck(code: int) -> None:
    """Exit at once when a failed HDF5 write (disk full) left objects HDF5 cannot close: its
    exit handler would crash on them (SIGSEGV) after the error has been reported."""
    h5py = sys.modules.get("h5py")
    if h5py is not None and h5py.h5f.get_obj_ids():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
