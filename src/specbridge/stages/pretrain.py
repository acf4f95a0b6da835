"""Stage ``pretrain``: train a model on LAMOST with the one training loop (torch DDP over the
ranks of srun/torchrun/mpiexec) and write its checkpoint.

Models: ``mlp`` (the spectrum MLP on flux), ``specformer`` (self-supervised masked-patch
reconstruction) and ``emb_mlp`` (the spectrum MLP on SpecFormer embeddings).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specbridge.digest import inputs_digest
from specbridge.errors import UserError
from specbridge.stages import declared

if TYPE_CHECKING:
    import torch
    from torch import nn

    from specbridge.parallel.ddp import DistEnv
    from specbridge.training.data import LabelledShards

CONFIG_SECTIONS = ("labels", "models", "training", "seed", "grid", "finetune")
MODELS = ("mlp", "specformer", "emb_mlp")

log = logging.getLogger("specbridge.pretrain")


def run(cfg: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, Any],
        comm: Any = None, *, model: str, epochs: int | None = None,
        n_labelled: int | None = None) -> int:
    """Pretrain ``model`` (one of :data:`MODELS`) and write ``outputs['checkpoint']`` (rank 0).

    inputs: ``spectra`` (index HDF5 of preprocessed LAMOST spectra), ``embeddings`` (index HDF5
    of their SpecFormer embeddings; model ``emb_mlp`` only), ``holdout`` (optional: index HDF5
    of the preprocessed DESI spectra; LAMOST spectra of stars in its validation or test split,
    by ``finetune.val_fraction``/``test_fraction``, are left out of pretraining). outputs:
    ``checkpoint``, optional ``workdir`` for the resumable checkpoints (default: the
    checkpoint path without suffix). ``epochs`` overrides ``training.epochs`` and
    ``n_labelled`` ``training.max_labelled``. ``comm`` is unused (ranks join through torch
    DDP). Returns 0; UserError for unusable inputs.
    """
    cfg = declared(cfg, CONFIG_SECTIONS)
    if epochs is not None:
        sf = {**cfg["training"].get("specformer", {}), "epochs": epochs}
        cfg["training"] = {**cfg["training"], "epochs": epochs, "specformer": sf}
    if n_labelled is not None:
        cfg["training"] = {**cfg["training"], "max_labelled": n_labelled}
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; one of {MODELS}")
    if model == "emb_mlp" and not inputs.get("embeddings"):
        raise UserError("model emb_mlp needs the embeddings input (index HDF5 of embeddings)")
    if (model == "specformer" and specformer_training(cfg["training"]).get("target_spectra")
            and not inputs.get("holdout")):
        raise UserError("training.specformer.target_spectra needs the target survey's index "
                        "(--holdout)")
    from specbridge.parallel.ddp import destroy_distributed
    from specbridge.training.loop import start_ranks

    env, device = start_ranks(log)
    held = _holdout(cfg, inputs)
    if model == "specformer":
        _pretrain_specformer(cfg, inputs, outputs, env, device, held)
    else:
        _pretrain_mlp(cfg, model, inputs, outputs, env, device, held)
    destroy_distributed()
    return 0


def _resume_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a resumable checkpoint must match (all but how the job is
    laid out on the machine)."""
    return {k: v for k, v in training.items() if k not in ("ddp_tasks", "threads_per_task")}


def _workdir(outputs: Mapping[str, Any]) -> Path:
    """The resumable-checkpoint folder of a training stage's ``outputs`` (created)."""
    from specbridge.training.loop import training_workdir

    return training_workdir(outputs["checkpoint"], outputs.get("workdir"))


def _holdout(cfg: Mapping[str, Any], inputs: Mapping[str, Any]) -> np.ndarray | None:
    """Star keys of the DESI validation and test splits (None without a holdout input)."""
    if not inputs.get("holdout"):
        return None
    from specbridge.training.data import holdout_stars

    ft = cfg["finetune"]
    return holdout_stars(inputs["holdout"], ft["val_fraction"], ft["test_fraction"])


def _log_excluded(sets: tuple[LabelledShards, ...], held: np.ndarray | None) -> int:
    """Log (and return) how many LAMOST spectra were left out as DESI validation/test stars."""
    n = sum(s.n_excluded for s in sets)
    if held is not None:
        log.info("left out of pretraining: %d LAMOST spectra of stars in the DESI validation "
                 "or test splits (%d such stars)", n, len(held))
    return n


def _labelled_splits(source: str, labels: list[str], tr: Mapping[str, Any], feature: str,
                     held: np.ndarray | None = None, augment: bool = False,
                     ) -> tuple[LabelledShards, LabelledShards]:
    """Training and validation rows with labels of the index ``source``, without the stars
    ``held`` (training rows: at most ``training.max_labelled``, by a hash of the star; with
    ``augment`` their batches also carry what S/N augmentation needs: flux and ivar, or the
    embeddings of degraded copies); UserError when there are fewer training rows than one
    batch or no validation row."""
    from specbridge.training.data import LabelledShards

    train_set = LabelledShards(source, labels, "train", tr["val_fraction"], feature=feature,
                               exclude_stars=held, max_rows=tr.get("max_labelled"),
                               with_ivar=augment and feature == "flux",
                               with_degraded=augment and feature == "embedding")
    val_set = LabelledShards(source, labels, "val", tr["val_fraction"], feature=feature,
                             exclude_stars=held)
    if train_set.n < tr["batch_size"] or val_set.n == 0:
        raise UserError(f"{train_set.n} training / {val_set.n} validation spectra with "
                        "labels: too few")
    return train_set, val_set


def _check_degraded_copies(embeddings: str, snr_min: float) -> None:
    """UserError unless the embedding index ``embeddings`` holds embeddings of copies degraded
    down to ``snr_min`` (``specbridge embed --degraded-snr-min``), the augmentation's floor."""
    from specbridge.io.shards import index_attrs

    got = float(index_attrs(embeddings).get("degraded_snr_min", -1.0))
    if got < 0:
        raise UserError(f"{embeddings}: no embedding_degraded, which training.snr_augment needs "
                        f"(embed the training survey with --degraded-snr-min {snr_min:g})")
    if abs(got - snr_min) > 1e-6 * snr_min:
        raise UserError(f"{embeddings}: degraded copies down to S/N {got:g}, but "
                        f"training.snr_augment.snr_min is {snr_min:g} (embed again with "
                        f"--degraded-snr-min {snr_min:g})")


def _input_width(cfg: Mapping[str, Any], model: str, inputs: Mapping[str, Any]) -> int:
    """Network input width: embedding dimensions (emb_mlp) or pixels of the common grid."""
    if model == "emb_mlp":
        from specbridge.io.shards import index_attrs

        return int(index_attrs(inputs["embeddings"])["dim"])
    return int(cfg["grid"]["npix"])


def _pretrain_mlp(cfg: Mapping[str, Any], model: str, inputs: Mapping[str, Any],
                  outputs: Mapping[str, Any], env: DistEnv, device: torch.device,
                  held: np.ndarray | None = None) -> None:
    """Supervised pretraining of the spectrum MLP on flux (``mlp``) or embeddings
    (``emb_mlp``); rank 0 reports the validation robust sigma and writes the checkpoint."""
    import torch

    from specbridge.models.checkpoint import build_model, mlp_arch
    from specbridge.training.augment import augment_settings
    from specbridge.training.loop import LoopSettings, train
    from specbridge.training.supervised import mean_nll, nll_loss_sum, predict_split

    tr, labels, seed = cfg["training"], cfg["labels"], cfg["seed"]
    on_emb = model == "emb_mlp"
    source = inputs["embeddings"] if on_emb else inputs["spectra"]
    # S/N augmentation: the MLP degrades its spectra per batch; the embedding MLP draws on
    # the embeddings of degraded copies that the embed stage wrote
    augment = augment_settings(tr)
    if on_emb and augment[0] > 0:
        _check_degraded_copies(inputs["embeddings"], augment[1])
    train_set, val_set = _labelled_splits(source, labels, tr,
                                          "embedding" if on_emb else "flux", held,
                                          augment=augment[0] > 0)
    n_held = _log_excluded((train_set, val_set), held)
    mean, std = train_set.label_stats()
    std = np.where(std > 0, std, 1.0)
    npix = _input_width(cfg, model, inputs)
    mc = cfg["models"][model]
    arch = mlp_arch(npix, mc["hidden"], len(labels), mc["dropout"])
    torch.manual_seed(seed)
    net = build_model(model, arch).to(device)
    if env.is_main:
        log.info("%s: %d parameters; %d training, %d validation spectra; %d rank(s)",
                 model, sum(p.numel() for p in net.parameters()), train_set.n,
                 val_set.n, env.world_size)
        if augment[0] > 0:
            log.info("S/N augmentation: %.0f %% of training spectra seen degraded to an S/N "
                     "between %g and their own%s", 100 * augment[0], augment[1],
                     " (embeddings of degraded copies)" if on_emb else "")

    def train_batches(epoch: int):
        return train_set.batches(epoch, tr["batch_size"], seed, env.rank, env.world_size,
                                 mean, std)

    def validate(m: nn.Module) -> float:
        return mean_nll(*predict_split(m, val_set, mean, std, device, seed))

    extra = {"labels": labels, "label_mean": mean, "label_std": std, "model": model,
             "hidden": list(mc["hidden"]), "dropout": mc["dropout"], "npix": npix,
             "inputs": inputs_digest(inputs), "training": _resume_settings(tr)}
    settings = LoopSettings.from_config(tr, seed, train_set.n // tr["batch_size"])
    net, state = train(net, nll_loss_sum(device, augment), train_batches, validate, settings,
                       _workdir(outputs), env, device, extra, log)
    if env.is_main:
        sig, spread = _report_mlp(net, val_set, mean, std, labels, device, seed)
        meta = {"labels": labels, "label_mean": mean, "label_std": std,
                "label_support": _label_support(cfg, train_set.labels),
                "history": state.history, "val_robust_sigma": sig, "val_label_spread": spread,
                "best_epoch": state.best_epoch, "n_excluded_holdout": n_held,
                "n_train_spectra": train_set.n, "n_val_spectra": val_set.n}
        _write(outputs["checkpoint"], model, arch, net, meta, cfg, state.best_epoch)


def _label_support(cfg: Mapping[str, Any], labels: np.ndarray) -> dict[str, Any]:
    """The training labels' support (:func:`specbridge.inference.ood.label_support`) for
    ``labels`` (n, n_labels) in the order of ``cfg['labels']``, its joint check over the
    configured ``training.label_support`` labels present."""
    from specbridge.inference.ood import label_support

    sup, names = cfg["training"]["label_support"], list(cfg["labels"])
    joint = [names.index(n) for n in sup["labels"] if n in names]
    return label_support(labels, joint, sup["k"], seed=cfg["seed"])


def _report_mlp(net: nn.Module, val_set: LabelledShards, mean: np.ndarray, std: np.ndarray,
                labels: list[str], device: torch.device, seed: int
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Log and return, per label in physical units, the validation robust sigma of the
    trained ``net`` and the spread (standard deviation) of the validation labels."""
    import torch

    from specbridge.training.supervised import predict_split, robust_sigma_per_label

    net.eval()
    with torch.no_grad():
        mu, _, y, _ = predict_split(net, val_set, mean, std, device, seed)
    sig = robust_sigma_per_label(mu, y, std, labels)
    spread = {lab: float(np.nanstd(y[:, i] * std[i])) for i, lab in enumerate(labels)}
    for lab in labels:
        log.info("validation robust sigma %-8s %.4g (label spread %.4g)", lab, sig[lab],
                 spread[lab])
    return sig, spread


def _write(path: str | Path, kind: str, arch: dict[str, Any], net: nn.Module,
           meta: dict[str, Any], cfg: Mapping[str, Any], best_epoch: int) -> None:
    """Write the pretrained checkpoint (with provenance) and log it."""
    from specbridge.models.checkpoint import Checkpoint, provenance, save_checkpoint

    save_checkpoint(path, Checkpoint(kind, arch, net.state_dict(),
                                     {**meta, "provenance": provenance(cfg)}))
    log.info("wrote %s (best epoch %d)", path, best_epoch)


class _MaskedLoss:
    """Masked-pixel reconstruction loss of a SpecFormer: ``loss_sum`` for the training loop
    (random hidden spans from torch's global RNG) and ``validate`` (the same spans every
    epoch, from a generator seeded with ``seed``), which also keeps the baseline loss
    (each hidden pixel predicted by its patches' mean of the true hidden values)."""

    def __init__(self, npix: int, sc: Mapping[str, Any], val_set: LabelledShards,
                 seed: int, device: torch.device, augment: tuple[float, float] = (0.0, 0.0)):
        self.npix, self.sc, self.val_set = npix, sc, val_set
        self.seed, self.device = seed, device
        self.augment = augment  # (fraction, snr_min) of training spectra degraded in S/N
        self.baseline = float("nan")

    def masks(self, b: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """(b, npix) boolean mask of the pixels hidden and reconstructed."""
        from specbridge.models.specformer import span_mask

        return span_mask(b, self.npix, self.sc["mask_fraction"], self.sc["mask_span"],
                         gen).to(self.device)

    def loss_sum(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Summed loss of a batch and its number of spectra; with S/N augmentation a
        fraction of the spectra is seen degraded and scored against the observed flux."""
        import torch

        from specbridge.training.augment import degrade_snr

        flux = torch.from_numpy(batch.flux).to(self.device)
        ivar = torch.from_numpy(batch.ivar).to(self.device)
        hidden = self.masks(flux.shape[0])
        if self.augment[0] > 0:
            seen, seen_ivar = degrade_snr(flux, ivar, *self.augment)
            loss, _ = net(seen, seen_ivar, hidden, flux)
        else:
            loss, _ = net(flux, ivar, hidden)
        return loss * flux.shape[0], flux.shape[0]

    def validate(self, net: nn.Module) -> float:
        """Mean validation loss per spectrum; sets ``baseline`` (each hidden pixel predicted by
        its patches' mean of the true hidden values)."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        tot = base = 0.0
        n = 0
        for b in self.val_set.batches(0, 256, self.seed, shuffle=False, drop_last=False):
            flux = torch.from_numpy(b.flux).to(self.device)
            loss, bl = net(flux, torch.from_numpy(b.ivar).to(self.device),
                           self.masks(len(flux), gen))
            tot += float(loss) * len(flux)
            base += float(bl) * len(flux)
            n += len(flux)
        self.baseline = base / max(n, 1)
        return tot / max(n, 1)


def specformer_training(training: Mapping[str, Any]) -> dict[str, Any]:
    """The SpecFormer's training settings: ``training`` with its ``specformer`` overrides
    (``snr_augment`` overridden key by key)."""
    own = training.get("specformer", {})
    out = {**{k: v for k, v in training.items() if k != "specformer"}, **own}
    if "snr_augment" in own:
        out["snr_augment"] = {**(training.get("snr_augment") or {}), **own["snr_augment"]}
    return out


def _pretrain_specformer(cfg: Mapping[str, Any], inputs: Mapping[str, Any],
                         outputs: Mapping[str, Any], env: DistEnv, device: torch.device,
                         held: np.ndarray | None = None) -> None:
    """Self-supervised masked-pixel pretraining of the SpecFormer on every usable LAMOST
    spectrum, labelled or not (and, with ``training.specformer.target_spectra``, the target
    survey's spectra of training-split stars); rank 0 measures the embedding quality on LAMOST
    validation spectra (reconstruction against the patch-mean baseline, linear probes, the
    out-of-domain score distribution) and writes the checkpoint with the embedding
    statistics."""
    import torch

    from specbridge.models.checkpoint import build_model
    from specbridge.training.augment import augment_settings
    from specbridge.training.data import LabelledShards
    from specbridge.training.loop import LoopSettings, train

    tr, sc, seed = specformer_training(cfg["training"]), cfg["models"]["specformer"], cfg["seed"]
    corpus = [inputs["spectra"]]
    if tr.get("target_spectra"):
        from specbridge.training.data import holdout_stars

        # every target-survey spectrum of a validation or test star stays out, labelled or not
        # (a superset of the labelled held-out stars)
        corpus.append(inputs["holdout"])
        ft = cfg["finetune"]
        held = holdout_stars(inputs["holdout"], ft["val_fraction"], ft["test_fraction"],
                             labelled_only=False)
    kw = {"labels": cfg["labels"], "val_fraction": tr["val_fraction"], "require_labels": False,
          "with_ivar": True, "exclude_stars": held}
    # the embedding statistics, probes, OOD quantiles and the reconstruction figures stored
    # with the checkpoint describe the LAMOST domain only
    lamost_train = LabelledShards(inputs["spectra"], split="train", **kw)
    lamost_val = LabelledShards(inputs["spectra"], split="val", **kw)
    train_set, val_set = lamost_train, lamost_val
    if len(corpus) > 1:
        train_set = LabelledShards(corpus, split="train", **kw)
        val_set = LabelledShards(corpus, split="val", **kw)
    if train_set.n < tr["batch_size"] or val_set.n == 0:
        raise UserError(f"{train_set.n} training / {val_set.n} validation spectra: too few "
                        f"for batches of {tr['batch_size']}")
    n_held = _log_excluded((lamost_train, lamost_val), held)
    n_target = train_set.n + val_set.n - lamost_train.n - lamost_val.n
    if len(corpus) > 1 and env.is_main:
        log.info("target-survey spectra in the corpus: %d of training-split stars (%d "
                 "spectra of its validation/test stars left out)",
                 n_target, train_set.n_excluded + val_set.n_excluded - n_held)
    arch = {"npix": int(cfg["grid"]["npix"]), **sc}
    torch.manual_seed(seed)
    net = build_model("specformer", arch).to(device)
    if env.is_main:
        log.info("SpecFormer: %d parameters; %d training, %d validation spectra (labelled or "
                 "not); %d rank(s); lr %.3g, batch %d, %d epochs, schedule %s",
                 sum(p.numel() for p in net.parameters()), train_set.n, val_set.n,
                 env.world_size, tr["lr"], tr["batch_size"], tr["epochs"], tr["schedule"])
    augment = augment_settings(tr)
    if env.is_main and augment[0] > 0:
        log.info("S/N augmentation: %.0f %% of training spectra seen degraded to an S/N "
                 "between %g and their own (denoising)", 100 * augment[0], augment[1])
    task = _MaskedLoss(net.npix, sc, val_set, seed, device, augment)

    def train_batches(epoch: int):
        return train_set.batches(epoch, tr["batch_size"], seed, env.rank, env.world_size)

    settings = LoopSettings.from_config(tr, seed, train_set.n // tr["batch_size"])
    extra = {"model": "specformer", **arch, "inputs": inputs_digest(inputs),
             "training": _resume_settings(tr)}
    net, state = train(net, task.loss_sum, train_batches, task.validate, settings,
                       _workdir(outputs), env, device, extra, log)
    if env.is_main:
        from specbridge.models.embedding_quality import measure

        net.eval()
        if val_set is not lamost_val:
            task = _MaskedLoss(net.npix, sc, lamost_val, seed, device)
        with torch.no_grad():
            val = task.validate(net)
        log.info("LAMOST validation masked-reconstruction loss %.4g; predicting each hidden "
                 "pixel by its patches' mean: %.4g (ratio %.3f)", val, task.baseline,
                 val / max(task.baseline, 1e-12))
        quality = measure(net, lamost_train, lamost_val, cfg["labels"], seed, device)
        for lab, q in quality["probe"].items():
            log.info("linear probe %-8s validation robust sigma %.4g on embeddings, %.4g on "
                     "pixels (label spread %.4g; %d/%d stars)", lab, q["embedding"],
                     q["pixels"], q["spread"], q["n_train"], q["n_val"])
        q = quality["ood_scores"]
        log.info("out-of-domain score on validation spectra: median %.3g, 99th percentile "
                 "%.3g", q[len(q) // 2], q[int(0.99 * (len(q) - 1))])
        q = quality["ood_distances"]
        log.info("embedding distance from the training spectra on validation spectra: median "
                 "%.3g, 99th percentile %.3g (%d components)", q[len(q) // 2],
                 q[int(0.99 * (len(q) - 1))], quality["density"]["variances"].size)
        meta = {"embed_mean": quality["embed_mean"], "embed_std": quality["embed_std"],
                "history": state.history, "val_loss": val, "val_patch_mean_loss": task.baseline,
                "best_epoch": state.best_epoch, "n_excluded_holdout": n_held,
                "n_train_spectra": train_set.n, "n_val_spectra": val_set.n,
                "n_target_spectra": n_target,
                "probe": quality["probe"], "ood_score_quantiles": quality["ood_scores"],
                "ood_density": quality["density"],
                "ood_distance_quantiles": quality["ood_distances"],
                "training": tr}
        _write(outputs["checkpoint"], "specformer", arch, net, meta, cfg, state.best_epoch)
