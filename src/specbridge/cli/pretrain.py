"""``specbridge pretrain``: pretrain on LAMOST with torch DDP (rank per process: srun,
torchrun or mpiexec). The stage itself is :mod:`specbridge.stages.pretrain`."""

from __future__ import annotations

import argparse
import sys

from specbridge.cli._common import add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    """Run the pretrain stage with the arguments of ``specbridge pretrain``."""
    if args.n_labelled is not None and args.n_labelled < 10:
        print("specbridge pretrain: --n-labelled must be at least 10", file=sys.stderr)
        return 2
    if args.model == "emb_mlp" and not args.embeddings:
        print("specbridge pretrain: --model emb_mlp needs --embeddings", file=sys.stderr)
        return 2
    from specbridge.stages import pretrain

    return pretrain.run(config_from_args(args),
                        {"spectra": args.spectra, "embeddings": args.embeddings,
                         "holdout": args.holdout},
                        {"checkpoint": args.output, "workdir": args.workdir},
                        model=args.model, epochs=args.epochs, n_labelled=args.n_labelled)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a model on LAMOST (torch DDP)",
                       description="Pretrain the spectrum MLP or the SpecFormer (masked-patch "
                                   "reconstruction; the MLP on its embeddings follows) with the "
                                   "one training loop: DDP "
                                   "over the ranks of srun/torchrun/mpiexec, checkpoints, "
                                   "resume, early stopping.")
    add_config_argument(p)
    p.add_argument("--model", required=True, choices=["mlp", "specformer", "emb_mlp"])
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed LAMOST spectra")
    p.add_argument("--embeddings", help="index HDF5 of embeddings (model emb_mlp)")
    p.add_argument("--holdout", metavar="INDEX",
                   help="index HDF5 of preprocessed DESI spectra: LAMOST spectra of stars in "
                        "its validation or test split are left out of pretraining")
    p.add_argument("--output", required=True, help="checkpoint to write")
    p.add_argument("--workdir", help="checkpoints for resuming (default: beside --output)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--n-labelled", type=int, metavar="N",
                   help="override training.max_labelled: train mlp/emb_mlp on about N "
                        "labelled spectra, whole stars (label-efficiency sweeps)")
    p.set_defaults(func=run)
