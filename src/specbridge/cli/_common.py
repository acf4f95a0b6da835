"""Arguments shared by the stage subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from specbridge.config import load_config


class CLIError(Exception):
    """An error the user can fix (bad argument, missing file); printed as one line, exit 2."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", default="config.yaml",
                        help="configuration file, validated against the schema; missing keys "
                             "take their defaults (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration named by ``--config``."""
    return load_config(args.config)
