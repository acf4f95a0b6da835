"""``specbridge embed``: arguments of :mod:`specbridge.stages.embed`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import embed

    comm, cfg = mpi_stage_config(args)
    return embed.run(cfg, {"model": args.model, "spectra": args.spectra},
                     {"index": args.output}, comm, force=args.force,
                     ood_scores=not args.no_ood_scores,
                     degraded_snr_min=args.degraded_snr_min)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="SpecFormer embeddings of preprocessed spectra (MPI)",
                       description="The SpecFormer's embedding (its output tokens averaged "
                                   "over wavelength regions, and the stats token's output "
                                   "where the model has embed_stats_token), standardised "
                                   "with the statistics stored in its checkpoint; one "
                                   "embedding shard per spectra shard (MPI over shards); a "
                                   "rerun computes only missing or stale shards.")
    add_config_argument(p)
    p.add_argument("--model", required=True, help="SpecFormer checkpoint")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed spectra")
    p.add_argument("--output", required=True, help="index HDF5 of embeddings to write")
    p.add_argument("--force", action="store_true", help="recompute shards even if complete")
    p.add_argument("--no-ood-scores", action="store_true",
                   help="skip the out-of-domain scores (4 more passes per spectrum; "
                        "ood_score is NaN)")
    p.add_argument("--degraded-snr-min", type=float, default=None, metavar="SNR",
                   help="also embed one copy of each spectrum degraded to an S/N between "
                        "SNR and its own (embedding_degraded: training data for an "
                        "S/N-augmented embedding MLP; twice the embedding time)")
    p.set_defaults(func=run)
