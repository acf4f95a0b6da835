"""Subcommands that check the parallel environment: ``check-mpi``, ``check-ddp``, ``config``."""

from __future__ import annotations

import argparse
import sys

import yaml

from specbridge.cli._common import add_config_argument, config_from_args


def _run_check_mpi(args: argparse.Namespace) -> int:
    from specbridge.parallel.checks import CheckFailed, check_mpi

    try:
        report = check_mpi(args.output, expect_size=args.expect_size)
    except CheckFailed as err:
        print(f"specbridge check-mpi: FAILED: {err}", file=sys.stderr)
        return 1
    if report:
        print(f"check-mpi: {report['world_size']} ranks OK ({report['mpi_library']})")
    return 0


def _run_check_ddp(args: argparse.Namespace) -> int:
    from specbridge.parallel.checks import CheckFailed, check_ddp

    try:
        report = check_ddp(args.output, expect_size=args.expect_size, backend=args.backend)
    except CheckFailed as err:
        print(f"specbridge check-ddp: FAILED: {err}", file=sys.stderr)
        return 1
    if report["is_main"]:
        print(f"check-ddp: {report['world_size']} ranks via {report['launcher']}, backend "
          f"{report['backend']}, all-reduce {report['allreduce_sum']} OK")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    yaml.safe_dump(cfg, sys.stdout, sort_keys=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-mpi", help="check that MPI ranks form one world",
                       description="Run under mpiexec or srun: every rank reports, rank 0 "
                                   "checks ranks 0..N-1 and the expected size, writes JSON.")
    p.add_argument("--output", required=True, help="JSON report written by rank 0")
    p.add_argument("--expect-size", type=int, help="fail unless the world has this many ranks")
    p.set_defaults(func=_run_check_mpi)

    p = sub.add_parser("check-ddp", help="check torch.distributed across ranks (all-reduce)",
                       description="Run under srun, torchrun or mpiexec: initialise the "
                                   "process group (gloo on CPU, nccl on GPU), all-reduce, check.")
    p.add_argument("--output", required=True, help="JSON report written by rank 0")
    p.add_argument("--expect-size", type=int, help="fail unless the world has this many ranks")
    p.add_argument("--backend", choices=["gloo", "nccl"], help="default: nccl if CUDA, else gloo")
    p.set_defaults(func=_run_check_ddp)

    p = sub.add_parser("config", help="validate a config file and print it with all defaults",
                       description="Validate against the schema; an invalid value ends with "
                                   "one line naming the key and the allowed values.")
    add_config_argument(p)
    p.set_defaults(func=_run_config)
