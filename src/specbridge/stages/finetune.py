"""Stage ``finetune``: transfer a LAMOST-pretrained model to DESI with one strategy (zero-shot,
residual-head adapter, LoRA, full) with the one training loop (torch DDP over the ranks of
srun/torchrun/mpiexec), and write the servable candidate checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specbridge.errors import UserError
from specbridge.stages import declared

if TYPE_CHECKING:
    import torch
    from torch import nn

    from specbridge.models.checkpoint import Checkpoint
    from specbridge.parallel.ddp import DistEnv
    from specbridge.training.data import LabelledShards

CONFIG_SECTIONS = ("finetune", "labels", "training", "seed")
MODELS = ("mlp", "emb_mlp", "specformer")

log = logging.getLogger("specbridge.finetune")


@dataclass
class _Job:
    """What one fine-tuning run works with: options, settings and the pretrained inputs.

    ``head`` is the pretrained SpectrumMLP checkpoint (the embedding MLP for ``specformer``),
    ``specformer`` the pretrained SpecFormer (model ``specformer`` only); ``mean``/``std``
    (n_labels,) float64 the pretraining label standardisation, physical units."""

    cfg: dict[str, Any]
    ft: dict[str, Any]
    model: str
    strategy: str
    inputs: Mapping[str, Any]
    head: Checkpoint
    specformer: Checkpoint | None
    labels: list[str]
    mean: np.ndarray
    std: np.ndarray

    @property
    def feature(self) -> str:
        """Network input: ``embedding``, ``spectrum`` (flux and ivar) or ``flux``."""
        return {"emb_mlp": "embedding", "specformer": "spectrum"}.get(self.model, "flux")


def run(cfg: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, Any],
        comm: Any = None, *, model: str, strategy: str, n_train: int | None = None,
        epochs: int | None = None) -> int:
    """Fine-tune ``model`` with ``strategy`` on DESI and write ``outputs['checkpoint']``
    (rank 0), a ``candidate`` checkpoint.

    inputs: ``pretrained`` (the pretrained SpectrumMLP checkpoint; for model ``specformer``
    the embedding MLP), ``spectra`` (index HDF5 of preprocessed DESI spectra), ``embeddings``
    (DESI embedding index; model ``emb_mlp``), ``specformer`` (the pretrained SpecFormer;
    model ``specformer``). outputs: ``checkpoint``, optional ``workdir`` (resumable
    checkpoints; default the checkpoint path without suffix). ``n_train`` and ``epochs``
    override ``finetune.n_train`` and ``finetune.epochs``. ``comm`` is unused (ranks join
    through torch DDP). Returns 0; UserError for unusable options or inputs.
    """
    from specbridge.models.transfer import trainable_parameters
    from specbridge.parallel.ddp import destroy_distributed
    from specbridge.training.loop import start_ranks

    cfg = declared(cfg, CONFIG_SECTIONS)
    ft = {**cfg["finetune"], **({"n_train": n_train} if n_train is not None else {}),
          **({"epochs": epochs} if epochs is not None else {})}
    _check_options(model, strategy, inputs)
    job = _read_pretrained(cfg, ft, model, strategy, inputs)
    env, device = start_ranks(log)
    train_set, val_set = _desi_splits(job)
    net = _transfer_model(job, device)
    n_trainable = trainable_parameters(net)
    if env.is_main:
        log.info("%s %s: %d of %d parameters trainable; %d training, %d validation "
                 "spectra; %d rank(s)", model, strategy, n_trainable,
                 sum(p.numel() for p in net.parameters()), train_set.n, val_set.n,
                 env.world_size)
    history: list[dict[str, float]] = []
    best_epoch = -1
    if n_trainable:
        net, history, best_epoch = _train(job, net, train_set, val_set, outputs, env, device)
    if env.is_main:
        record = {"trainable_parameters": n_trainable, "n_train": train_set.n,
                  "history": history, "best_epoch": best_epoch}
        _write_candidate(job, net, val_set, record, outputs, device)
    destroy_distributed()
    return 0


def _check_options(model: str, strategy: str, inputs: Mapping[str, Any]) -> None:
    """UserError unless ``model``, ``strategy`` and ``inputs`` go together."""
    from specbridge.models.transfer import STRATEGIES

    if model not in MODELS or strategy not in STRATEGIES:
        raise UserError(f"model {model!r} / strategy {strategy!r}: models are {MODELS}, "
                        f"strategies {STRATEGIES}")
    if model == "emb_mlp" and not inputs.get("embeddings"):
        raise UserError("model emb_mlp needs the embeddings input (DESI embedding index)")
    if model == "specformer" and (strategy != "lora" or not inputs.get("specformer")):
        raise UserError("model specformer takes strategy lora, the specformer input (the "
                        "pretrained SpecFormer) and the pretrained input (the pretrained "
                        "embedding MLP)")


def _load_pretrained(path: str | Path, kind: str) -> Checkpoint:
    """The pretrained checkpoint of ``kind`` at ``path``; UserError when it cannot be read or
    holds another kind."""
    from specbridge.models.checkpoint import load_checkpoint

    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"cannot read pretrained checkpoint {path}: "
                        f"{exc.strerror or exc}") from None
    return load_checkpoint(path, (kind,))


def _read_pretrained(cfg: dict[str, Any], ft: dict[str, Any], model: str, strategy: str,
                     inputs: Mapping[str, Any]) -> _Job:
    """The job with its pretrained checkpoints read and checked against the config."""
    on_sf = model == "specformer"
    head = _load_pretrained(inputs["pretrained"], "emb_mlp" if on_sf else model)
    sf = _load_pretrained(inputs["specformer"], "specformer") if on_sf else None
    labels = list(head.meta["labels"])
    if labels != list(cfg["labels"]):
        raise UserError(f"{inputs['pretrained']} predicts {labels}, the config asks for "
                        f"{cfg['labels']}: pretrain again")
    return _Job(cfg, ft, model, strategy, inputs, head, sf, labels,
                np.asarray(head.meta["label_mean"], np.float64),
                np.asarray(head.meta["label_std"], np.float64))


def _desi_splits(job: _Job) -> tuple[LabelledShards, LabelledShards]:
    """The DESI training (at most ``finetune.n_train`` rows) and validation splits; UserError
    when too few to fine-tune."""
    from specbridge.training.data import LabelledShards

    ft = job.ft
    source = job.inputs["embeddings"] if job.model == "emb_mlp" else job.inputs["spectra"]
    kw = {"labels": job.labels, "val_fraction": ft["val_fraction"],
          "test_fraction": ft["test_fraction"], "feature": job.feature}
    train_set = LabelledShards(source, split="train", max_rows=ft["n_train"], **kw)
    val_set = LabelledShards(source, split="val", **kw)
    batch = job.cfg["training"]["batch_size"]
    if val_set.n == 0 or (job.strategy != "zeroshot" and train_set.n < batch):
        raise UserError(f"{train_set.n} training / {val_set.n} validation spectra with "
                        "labels: too few to fine-tune")
    return train_set, val_set


def _pretrained_network(job: _Job) -> nn.Module:
    """The pretrained network in training mode: the SpectrumMLP, or for model ``specformer``
    the SpecFormer with the embedding MLP on top (SpecFormerRegressor)."""
    from specbridge.models.checkpoint import build_model
    from specbridge.models.transfer import SpecFormerRegressor

    base = build_model(job.head.kind, job.head.arch)
    base.load_state_dict(job.head.state_dict)
    if job.specformer is not None:
        sf = build_model("specformer", job.specformer.arch)
        sf.load_state_dict(job.specformer.state_dict)
        base = SpecFormerRegressor(sf, base, job.specformer.meta["embed_mean"],
                                   job.specformer.meta["embed_std"])
    return base.train()


def _transfer_model(job: _Job, device: torch.device) -> nn.Module:
    """The pretrained network wrapped for the strategy (seeded with ``seed``), on ``device``."""
    import torch

    from specbridge.models.transfer import build_transfer_model

    base = _pretrained_network(job)
    torch.manual_seed(job.cfg["seed"])
    return build_transfer_model(base, job.strategy, job.ft["adapter"]["hidden"],
                                job.ft["lora"]).to(device)


def _train(job: _Job, net: nn.Module, train_set: LabelledShards, val_set: LabelledShards,
           outputs: Mapping[str, Any], env: DistEnv, device: torch.device
           ) -> tuple[nn.Module, list[dict[str, float]], int]:
    """Train what the strategy trains with the one loop: (the network with the best weights,
    the history, the best epoch)."""
    from specbridge.digest import inputs_digest
    from specbridge.training.loop import LoopSettings, train, training_workdir
    from specbridge.training.supervised import mean_nll, nll_loss_sum, predict_split

    ft, tr, seed = job.ft, job.cfg["training"], job.cfg["seed"]
    settings = LoopSettings.from_config(
        {**tr, "epochs": ft["epochs"], "lr": ft["lr"], "patience": ft["patience"]}, seed,
        train_set.n // tr["batch_size"])

    def train_batches(epoch: int):
        return train_set.batches(epoch, tr["batch_size"], seed, env.rank, env.world_size,
                                 job.mean, job.std)

    def validate(m: nn.Module) -> float:
        return mean_nll(*predict_split(m, val_set, job.mean, job.std, device, seed))

    workdir = training_workdir(outputs["checkpoint"], outputs.get("workdir"))
    net, state = train(net, nll_loss_sum(device), train_batches, validate, settings, workdir,
                       env, device, {"strategy": job.strategy, "finetune": ft,
                                     "inputs": inputs_digest(job.inputs)}, log)
    return net, state.history, state.best_epoch


def _candidate_arch(job: _Job) -> dict[str, Any]:
    """The servable architecture of the candidate (see :mod:`specbridge.models.transfer`)."""
    from specbridge.models.transfer import architecture, specformer_architecture

    head = {**job.head.arch, "labels": job.labels}
    if job.specformer is not None:
        return specformer_architecture(job.specformer.arch, head)
    return architecture(head, job.strategy, job.ft["adapter"]["hidden"])


def _write_candidate(job: _Job, net: nn.Module, val_set: LabelledShards,
                     record: dict[str, Any], outputs: Mapping[str, Any], device: torch.device
                     ) -> None:
    """Validate the fine-tuned ``net`` (NLL, robust sigma per label, logged) and write the
    servable candidate checkpoint (LoRA merged); ``record``: the training record for meta
    (trainable_parameters, n_train, history, best_epoch)."""
    import torch

    from specbridge.models.checkpoint import Checkpoint, provenance, save_checkpoint
    from specbridge.models.transfer import servable
    from specbridge.training.supervised import mean_nll, predict_split, robust_sigma_per_label

    net.eval()
    with torch.no_grad():
        mu, lv, y, ye = predict_split(net, val_set, job.mean, job.std, device, job.cfg["seed"])
        serve = servable(net).cpu().eval()
    val_loss = mean_nll(mu, lv, y, ye)
    sig = robust_sigma_per_label(mu, y, job.std, job.labels)
    log.info("validation NLL %.4f; robust sigma %s", val_loss,
             ", ".join(f"{k} {v:.4g}" for k, v in sig.items()))
    on_sf = job.specformer is not None
    meta = {"candidate": f"{job.model}_{job.strategy}", "model": job.model,
            "strategy": job.strategy, "labels": job.labels, "label_mean": job.mean,
            "label_std": job.std, "feature": job.feature, **record, "val_loss": val_loss,
            "val_robust_sigma": sig, "pretrained": str(job.inputs["pretrained"]),
            "specformer": str(job.inputs["specformer"]) if on_sf else None,
            "lora": job.ft["lora"] if job.strategy == "lora" else None,
            "label_support": job.head.meta.get("label_support"),
            "provenance": provenance(job.cfg)}
    save_checkpoint(outputs["checkpoint"],
                    Checkpoint("candidate", _candidate_arch(job), serve.state_dict(), meta))
    log.info("wrote %s", outputs["checkpoint"])
