"""``specbridge finetune``: transfer a LAMOST-pretrained model to DESI with one strategy
(zero-shot, residual-head adapter, LoRA, full), with the one training loop (DDP over the ranks
of srun/torchrun/mpiexec), and write the servable candidate checkpoint. The stage itself is
:mod:`specbridge.stages.finetune`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import CLIError, add_config_argument, config_from_args


def run(args: argparse.Namespace) -> int:
    """Run the finetune stage with the arguments of ``specbridge finetune``."""
    cfg = config_from_args(args)
    if args.model == "emb_mlp" and not args.embeddings:
        raise CLIError("--model emb_mlp needs --embeddings (DESI embedding index)")
    if args.model == "specformer" and (args.strategy != "lora" or not args.specformer):
        raise CLIError("--model specformer takes --strategy lora, --specformer (the pretrained "
                       "SpecFormer) and --pretrained (the pretrained embedding MLP)")
    from specbridge.stages import finetune

    inputs = {"pretrained": args.pretrained, "spectra": args.spectra,
              "embeddings": args.embeddings, "specformer": args.specformer}
    return finetune.run(cfg, inputs, {"checkpoint": args.output, "workdir": args.workdir},
                        model=args.model, strategy=args.strategy, n_train=args.n_train,
                        epochs=args.epochs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="transfer a pretrained model to DESI",
                       description="Zero-shot (no training), residual-head adapter (backbone "
                                   "frozen), LoRA through peft, or full fine-tuning on the "
                                   "labelled DESI training split; writes the servable "
                                   "candidate checkpoint (LoRA merged).")
    add_config_argument(p)
    p.add_argument("--model", required=True, choices=["mlp", "emb_mlp", "specformer"],
                   help="specformer: LoRA on the SpecFormer with the embedding MLP on top")
    p.add_argument("--strategy", required=True, choices=["zeroshot", "adapter", "lora", "full"])
    p.add_argument("--pretrained", required=True, help="pretrained checkpoint")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed DESI spectra")
    p.add_argument("--embeddings", help="index HDF5 of DESI embeddings (model emb_mlp)")
    p.add_argument("--specformer", help="pretrained SpecFormer checkpoint (model specformer)")
    p.add_argument("--output", required=True, help="candidate checkpoint to write")
    p.add_argument("--workdir", help="checkpoints for resuming (default: beside --output)")
    p.add_argument("--n-train", type=int, help="override finetune.n_train (size sweeps)")
    p.add_argument("--epochs", type=int, help="override finetune.epochs")
    p.set_defaults(func=run)
