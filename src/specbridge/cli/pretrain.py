"""``specbridge pretrain``: pretrain on LAMOST with torch DDP (rank per process: srun,
torchrun or mpiexec). The spectrum MLP is built; the SpecFormer and the embedding MLP follow."""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.cli._common import add_config_argument, checkpoint_dir, config_from_args

log = logging.getLogger("specbridge.pretrain")


def _setup(args: argparse.Namespace):
    """Config (with --epochs applied), the process group and device; quiet non-main ranks."""
    from specbridge.parallel.ddp import init_distributed

    cfg = config_from_args(args)
    if args.epochs is not None:
        cfg["training"]["epochs"] = args.epochs
    env, device = init_distributed()
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
        log.setLevel(logging.WARNING)
    return cfg, env, device


def run(args: argparse.Namespace) -> int:
    if args.model == "specformer":
        return run_specformer(args)
    if args.model == "emb_mlp" and not args.embeddings:
        print("specbridge pretrain: --model emb_mlp needs --embeddings", file=sys.stderr)
        return 2
    import torch

    from specbridge.models import SpectrumMLP
    from specbridge.parallel.ddp import destroy_distributed
    from specbridge.training.data import LabelledShards
    from specbridge.training.loop import LoopSettings, train
    from specbridge.training.supervised import (
        mean_nll,
        nll_loss_sum,
        predict_split,
        robust_sigma_per_label,
    )

    cfg, env, device = _setup(args)
    tr = cfg["training"]
    labels = cfg["labels"]
    on_emb = args.model == "emb_mlp"
    source = args.embeddings if on_emb else args.spectra
    feature = "embedding" if on_emb else "flux"
    train_set = LabelledShards(source, labels, "train", tr["val_fraction"], feature=feature)
    val_set = LabelledShards(source, labels, "val", tr["val_fraction"], feature=feature)
    if train_set.n < tr["batch_size"] or val_set.n == 0:
        raise SystemExit(f"specbridge pretrain: {train_set.n} training / {val_set.n} "
                         "validation spectra with labels: too few")
    mean, std = train_set.label_stats()
    std = np.where(std > 0, std, 1.0)
    if on_emb:
        from specbridge.io.shards import index_attrs
        npix = int(index_attrs(source)["dim"])
    else:
        npix = cfg["grid"]["npix"]
    mc = cfg["models"]["emb_mlp" if on_emb else "mlp"]
    torch.manual_seed(cfg["seed"])
    model = SpectrumMLP(npix, mc["hidden"], len(labels), mc["dropout"]).to(device)
    if env.is_main:
        log.info("%s: %d parameters; %d training, %d validation spectra; %d rank(s)",
                 args.model, sum(p.numel() for p in model.parameters()), train_set.n,
                 val_set.n, env.world_size)

    loss_sum = nll_loss_sum(device)

    def train_batches(epoch):
        return train_set.batches(epoch, tr["batch_size"], cfg["seed"], env.rank,
                                 env.world_size, mean, std)

    def validate(net):
        return mean_nll(*predict_split(net, val_set, mean, std, device, cfg["seed"]))

    workdir = checkpoint_dir(args)
    extra = {"labels": labels, "label_mean": mean, "label_std": std, "model": args.model,
             "hidden": list(mc["hidden"]), "dropout": mc["dropout"], "npix": npix}
    model, state = train(model, loss_sum, train_batches, validate,
                         LoopSettings.from_config(tr, cfg["seed"]), workdir, env, device,
                         extra, log)
    if env.is_main:
        model.eval()
        with torch.no_grad():
            mu, _, y, _ = predict_split(model, val_set, mean, std, device, cfg["seed"])
        sig = robust_sigma_per_label(mu, y, std, labels)
        spread = {lab: float(np.nanstd(y[:, i] * std[i])) for i, lab in enumerate(labels)}
        for lab in labels:
            log.info("validation robust sigma %-8s %.4g (label spread %.4g)", lab, sig[lab],
                     spread[lab])
        with atomic_output(args.output) as tmp:
            torch.save({"model": model.state_dict(), "extra": extra, "history": state.history,
                     "val_robust_sigma": sig, "val_label_spread": spread,
                     "best_epoch": state.best_epoch}, tmp)
        log.info("wrote %s (best epoch %d)", args.output, state.best_epoch)
    destroy_distributed()
    return 0


def run_specformer(args: argparse.Namespace) -> int:
    """Self-supervised masked-patch pretraining of the SpecFormer on all usable spectra."""
    import torch

    from specbridge.models import SpecFormer
    from specbridge.models.specformer import chunk_mask
    from specbridge.parallel.ddp import destroy_distributed
    from specbridge.training.data import LabelledShards
    from specbridge.training.loop import LoopSettings, train

    cfg, env, device = _setup(args)
    tr = cfg["training"]
    sc = cfg["models"]["specformer"]
    kw = {"labels": cfg["labels"], "val_fraction": tr["val_fraction"], "require_labels": False,
          "with_ivar": True}
    train_set = LabelledShards(args.spectra, split="train", **kw)
    val_set = LabelledShards(args.spectra, split="val", **kw)
    npix = cfg["grid"]["npix"]
    torch.manual_seed(cfg["seed"])
    model = SpecFormer(npix, sc["patch_size"], sc["patch_stride"], sc["d_model"],
                       sc["n_layers"], sc["n_heads"]).to(device)
    if env.is_main:
        log.info("SpecFormer: %d parameters; %d training, %d validation spectra; %d rank(s)",
                 sum(p.numel() for p in model.parameters()), train_set.n, val_set.n,
                 env.world_size)

    def masks(b, gen=None):
        return chunk_mask(b, model.n_patches, sc["mask_fraction"], sc["mask_chunk"],
                          gen).to(device)

    def loss_sum(net, batch):
        flux = torch.from_numpy(batch.flux).to(device)
        ivar = torch.from_numpy(batch.ivar).to(device)
        loss, _ = net(flux, ivar, masks(flux.shape[0]))
        return loss * flux.shape[0], flux.shape[0]

    def train_batches(epoch):
        return train_set.batches(epoch, tr["batch_size"], cfg["seed"], env.rank,
                                 env.world_size)

    last_baseline = {}

    def validate(net):
        gen = torch.Generator().manual_seed(cfg["seed"])  # the same masks every epoch
        tot = base = 0.0
        n = 0
        for b in val_set.batches(0, 256, cfg["seed"], shuffle=False, drop_last=False):
            flux = torch.from_numpy(b.flux).to(device)
            loss, bl = net(flux, torch.from_numpy(b.ivar).to(device), masks(len(flux), gen))
            tot += float(loss) * len(flux)
            base += float(bl) * len(flux)
            n += len(flux)
        last_baseline["value"] = base / max(n, 1)
        return tot / max(n, 1)

    workdir = checkpoint_dir(args)
    extra = {"model": "specformer", "npix": npix, **{k: sc[k] for k in sc}}
    model, state = train(model, loss_sum, train_batches, validate,
                         LoopSettings.from_config(tr, cfg["seed"]), workdir, env, device,
                         extra, log)
    if env.is_main:
        model.eval()
        with torch.no_grad():
            val = validate(model)
        embs = []
        with torch.no_grad():
            for b in train_set.batches(0, 256, cfg["seed"], shuffle=False, drop_last=False):
                embs.append(model.embed(torch.from_numpy(b.flux).to(device),
                                        torch.from_numpy(b.ivar).to(device)).cpu().numpy())
        embs = np.concatenate(embs)
        extra["embed_mean"] = embs.mean(0)
        extra["embed_std"] = np.where(embs.std(0) > 0, embs.std(0), 1.0)
        ratio = val / max(last_baseline["value"], 1e-12)
        log.info("validation masked-reconstruction loss %.4g; predicting each masked patch by "
                 "its mean: %.4g (ratio %.3f)", val, last_baseline["value"], ratio)
        with atomic_output(args.output) as tmp:
            torch.save({"model": model.state_dict(), "extra": extra, "history": state.history,
                        "val_loss": val, "val_patch_mean_loss": last_baseline["value"],
                        "best_epoch": state.best_epoch}, tmp)
        log.info("wrote %s (best epoch %d)", args.output, state.best_epoch)
    destroy_distributed()
    return 0


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
    p.add_argument("--output", required=True, help="checkpoint to write")
    p.add_argument("--workdir", help="checkpoints for resuming (default: beside --output)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.set_defaults(func=run)
