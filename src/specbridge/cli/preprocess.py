"""``specbridge preprocess``: arguments of :mod:`specbridge.stages.preprocess`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import preprocess

    comm, cfg = mpi_stage_config(args)
    return preprocess.run(cfg, {"manifest": args.manifest}, {"index": args.output}, comm,
                          force=args.force, spectra_per_shard=args.spectra_per_shard)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="resample and continuum-normalise spectra (MPI)",
                       description="Shift to the rest frame, resample flux-conservingly onto "
                                   "the common grid with ivar and masks, optionally broaden "
                                   "DESI to LAMOST's resolution, normalise by a continuum; "
                                   "HDF5 shards and an index. Run under mpiexec/srun for "
                                   "several ranks; a rerun skips complete shards.")
    add_config_argument(p)
    p.add_argument("--manifest", required=True, help="manifest FITS file (one survey)")
    p.add_argument("--output", required=True,
                   help="index HDF5 file to write; shards go to shards/ beside it")
    p.add_argument("--spectra-per-shard", type=int,
                   help="override preprocess.spectra_per_shard")
    p.add_argument("--force", action="store_true", help="recompute shards even if complete")
    p.set_defaults(func=run)
