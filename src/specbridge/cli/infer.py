"""``specbridge infer``: arguments of :mod:`specbridge.stages.infer`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import infer

    comm, cfg = mpi_stage_config(args)
    inputs = {"checkpoints": args.checkpoints, "selection": args.selection,
              "spectra": args.spectra, "embeddings": args.embeddings,
              "calibration": args.calibration}
    return infer.run(cfg, inputs, {"index": args.output}, comm, force=args.force,
                     part=args.part, merge=args.merge_parts)


def _part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 3/8)") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be in 0..N-1")
    return k, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="sharded predictions of every candidate (MPI)",
                       description="Every candidate's predictions for all DESI spectra and "
                                   "the regime-routed values, one HDF5 shard per spectra "
                                   "shard; a rerun computes only missing or stale shards.")
    add_config_argument(p)
    p.add_argument("--checkpoints", nargs="+", required=True, help="candidate checkpoints")
    p.add_argument("--selection", required=True, help="selection table (ECSV) of evaluate")
    p.add_argument("--calibration",
                   help="error recalibration table (ECSV) of evaluate; without it the "
                        "candidates' errors are used as predicted")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed DESI spectra")
    p.add_argument("--embeddings", help="index HDF5 of DESI embeddings (embedding candidates)")
    p.add_argument("--output", required=True,
                   help="prediction index HDF5 to write; shards go to shards/ beside it")
    p.add_argument("--force", action="store_true", help="recompute shards even if complete")
    parts = p.add_mutually_exclusive_group()
    parts.add_argument("--part", type=_part, metavar="K/N",
                       help="job-array mode: compute only part K (0-based) of N contiguous "
                            "shard ranges; --output is then this part's partial index")
    parts.add_argument("--merge-parts", nargs="+", metavar="PART_INDEX",
                       help="job-array mode: write --output from the shards of these N "
                            "partial indexes (every shard must be complete); computes nothing")
    p.set_defaults(func=run)
