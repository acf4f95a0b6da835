"""Arguments shared by the stage subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from specbridge.config import load_config
from specbridge.errors import UserError

CLIError = UserError  # the CLI's name for it: printed as one line, exit 2


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", default="config.yaml",
                        help="configuration file, validated against the schema; missing keys "
                             "take their defaults (default: %(default)s)")


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """Where a training stage keeps its resumable checkpoints: ``--workdir``, default the
    ``--output`` path without its suffix (created)."""
    from specbridge.training.loop import training_workdir

    return training_workdir(args.output, args.workdir)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration named by ``--config``."""
    return load_config(args.config)


def mpi_stage_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(communicator or None, validated config) for a stage run under mpiexec/srun: rank 0
    reads the config named by ``--config`` and broadcasts it; a bad one stops every rank with
    the same one-line message."""
    from specbridge.config import ConfigError
    from specbridge.parallel.mpi import bcast_from_rank0, get_comm

    comm = get_comm()
    return comm, bcast_from_rank0(comm, lambda: config_from_args(args), (ConfigError, OSError))
