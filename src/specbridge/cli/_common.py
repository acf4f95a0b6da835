"""Arguments shared by the stage subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from specbridge.config import load_config


class CLIError(Exception):
    """An error the user can fix (bad argument, missing file); printed as one line, exit 2."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", default="config.yaml",
                        help="configuration file, validated against the schema; missing keys "
                             "take their defaults (default: %(default)s)")


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """Where a training stage keeps its resumable checkpoints: ``--workdir``, default the
    ``--output`` path without its suffix (created)."""
    workdir = Path(args.workdir or Path(args.output).with_suffix("")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration named by ``--config``."""
    return load_config(args.config)
