"""``specbridge finetune``: transfer a LAMOST-pretrained model to DESI with one strategy
(zero-shot, residual-head adapter, LoRA, full), with the one training loop (DDP over the ranks
of srun/torchrun/mpiexec), and write the servable candidate checkpoint."""

from __future__ import annotations

import argparse
import logging

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.cli._common import (
    CLIError,
    add_config_argument,
    checkpoint_dir,
    config_from_args,
)

log = logging.getLogger("specbridge.finetune")


def run(args: argparse.Namespace) -> int:
    import torch

    from specbridge.models import SpecFormer, SpectrumMLP
    from specbridge.models.transfer import (
        SpecFormerRegressor,
        architecture,
        build_transfer_model,
        servable,
        specformer_architecture,
        trainable_parameters,
    )
    from specbridge.parallel.ddp import destroy_distributed, init_distributed
    from specbridge.training.data import LabelledShards
    from specbridge.training.loop import LoopSettings, train
    from specbridge.training.supervised import (
        mean_nll,
        nll_loss_sum,
        predict_split,
        robust_sigma_per_label,
    )

    cfg = config_from_args(args)
    ft = cfg["finetune"]
    if args.n_train is not None:
        ft["n_train"] = args.n_train
    if args.epochs is not None:
        ft["epochs"] = args.epochs
    on_emb = args.model == "emb_mlp"
    on_sf = args.model == "specformer"  # LoRA on the SpecFormer, the embedding MLP on top
    if on_emb and not args.embeddings:
        raise CLIError("--model emb_mlp needs --embeddings (DESI embedding index)")
    if on_sf and (args.strategy != "lora" or not args.specformer):
        raise CLIError("--model specformer takes --strategy lora, --specformer (the pretrained "
                       "SpecFormer) and --pretrained (the pretrained embedding MLP)")
    head_model = "emb_mlp" if on_sf else args.model
    try:
        blob = torch.load(args.pretrained, map_location="cpu", weights_only=False)
        extra = blob["extra"]
        if extra.get("model") != head_model:
            raise CLIError(f"{args.pretrained} holds model {extra.get('model')!r}, "
                           f"not {head_model!r}")
        sf_blob = (torch.load(args.specformer, map_location="cpu", weights_only=False)
                   if on_sf else None)
        if on_sf and sf_blob["extra"].get("model") != "specformer":
            raise CLIError(f"{args.specformer} is not a SpecFormer checkpoint")
    except (OSError, KeyError, RuntimeError) as exc:
        raise CLIError(f"cannot read pretrained checkpoint {args.pretrained}: {exc}") from None
    labels = list(extra["labels"])
    if labels != list(cfg["labels"]):
        raise CLIError(f"{args.pretrained} predicts {labels}, the config asks for "
                       f"{cfg['labels']}: pretrain again")
    env, device = init_distributed()
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
        log.setLevel(logging.WARNING)
    mean = np.asarray(extra["label_mean"], np.float64)
    std = np.asarray(extra["label_std"], np.float64)
    source = args.embeddings if on_emb else args.spectra
    feature = "embedding" if on_emb else "spectrum" if on_sf else "flux"
    kw = {"labels": labels, "val_fraction": ft["val_fraction"],
          "test_fraction": ft["test_fraction"], "feature": feature}
    train_set = LabelledShards(source, split="train", max_rows=ft["n_train"], **kw)
    val_set = LabelledShards(source, split="val", **kw)
    batch = cfg["training"]["batch_size"]
    if val_set.n == 0 or (args.strategy != "zeroshot" and train_set.n < batch):
        raise CLIError(f"{train_set.n} training / {val_set.n} validation DESI spectra with "
                       "labels: too few to fine-tune")

    base = SpectrumMLP(extra["npix"], extra["hidden"], len(labels), extra["dropout"])
    base.load_state_dict(blob["model"])
    if on_sf:
        se = sf_blob["extra"]
        sf = SpecFormer(se["npix"], se["patch_size"], se["patch_stride"], se["d_model"],
                        se["n_layers"], se["n_heads"])
        sf.load_state_dict(sf_blob["model"])
        base = SpecFormerRegressor(sf, base, se["embed_mean"], se["embed_std"])
    torch.manual_seed(cfg["seed"])
    model = build_transfer_model(base, args.strategy, ft["adapter"]["hidden"],
                                 ft["lora"]).to(device)
    n_trainable = trainable_parameters(model)
    if env.is_main:
        log.info("%s %s: %d of %d parameters trainable; %d training, %d validation DESI "
                 "spectra; %d rank(s)", args.model, args.strategy, n_trainable,
                 sum(p.numel() for p in model.parameters()), train_set.n, val_set.n,
                 env.world_size)

    def validate(net):
        return mean_nll(*predict_split(net, val_set, mean, std, device, cfg["seed"]))

    history: list[dict] = []
    best_epoch = -1
    if n_trainable:
        settings = LoopSettings(ft["epochs"], ft["lr"], cfg["training"]["weight_decay"],
                                cfg["training"]["optimizer"], ft["patience"], cfg["seed"],
                                cfg["training"].get("schedule", "constant"))

        def train_batches(epoch):
            return train_set.batches(epoch, batch, cfg["seed"], env.rank, env.world_size,
                                     mean, std)

        model, state = train(model, nll_loss_sum(device), train_batches, validate, settings,
                             checkpoint_dir(args), env, device, {"strategy": args.strategy}, log)
        history, best_epoch = state.history, state.best_epoch
    if env.is_main:
        model.eval()
        with torch.no_grad():
            mu, lv, y, ye = predict_split(model, val_set, mean, std, device, cfg["seed"])
            net = servable(model).cpu().eval()
        val_loss = mean_nll(mu, lv, y, ye)
        sig = robust_sigma_per_label(mu, y, std, labels)
        log.info("validation NLL %.4f; robust sigma %s", val_loss,
                 ", ".join(f"{k} {v:.4g}" for k, v in sig.items()))
        arch = (specformer_architecture(sf_blob["extra"], extra) if on_sf else
                architecture(extra, args.strategy, ft["adapter"]["hidden"]))
        with atomic_output(args.output) as tmp:
            torch.save({"candidate": f"{args.model}_{args.strategy}", "model": args.model,
                        "strategy": args.strategy, "arch": arch,
                        "state_dict": net.state_dict(), "labels": labels,
                        "label_mean": mean, "label_std": std,
                        "feature": feature,
                        "trainable_parameters": n_trainable, "n_train": train_set.n,
                        "history": history, "best_epoch": best_epoch, "val_loss": val_loss,
                        "val_robust_sigma": sig,
                        "pretrained": str(args.pretrained),
                        "lora": ft["lora"] if args.strategy == "lora" else None}, tmp)
        log.info("wrote %s", args.output)
    destroy_distributed()
    return 0


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
