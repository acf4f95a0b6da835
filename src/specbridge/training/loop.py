"""The one training loop: torch DDP (gloo on CPU, nccl + bf16 autocast on GPU), AdamW (or the
configured optimizer) with a schedule, early stopping on the validation loss, and atomic best
and last checkpoints (kind ``resume`` of :mod:`specbridge.models.checkpoint`) holding model,
optimizer, scheduler, epoch, RNG and history, from which a killed job resumes. Each epoch seeds
torch's and Python's RNGs from (seed, epoch, rank), and the data order comes from a numpy
Generator seeded from (seed, epoch), so a resumed run repeats the interrupted epoch exactly."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from specbridge.faults import kill_point
from specbridge.models.checkpoint import RESUME_KIND, Checkpoint, jsonable, load_checkpoint
from specbridge.models.checkpoint import save_checkpoint as write_checkpoint
from specbridge.parallel.ddp import DistEnv


@dataclass
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    optimizer: str = "adamw"
    patience: int = 10
    seed: int = 0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0          # max global gradient norm; 0: no clipping
    steps_per_epoch: int = 1        # optimizer steps per epoch (per-step schedules)

    @classmethod
    def from_config(cls, training: dict[str, Any], seed: int,
                    steps_per_epoch: int = 1) -> LoopSettings:
        """Settings from a ``training`` config section (see the schema)."""
        return cls(training["epochs"], training["lr"], training["weight_decay"],
                   training["optimizer"], training["patience"], seed,
                   training.get("schedule", "constant"), training.get("warmup_epochs", 0.0),
                   training.get("grad_clip", 0.0), max(1, int(steps_per_epoch)))

    @property
    def per_step(self) -> bool:
        """Whether the schedule advances every optimizer step (else every epoch)."""
        return self.schedule == "warmup_cosine"


@dataclass
class LoopState:
    epoch: int = 0                      # epochs completed
    best_val: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(params, s: LoopSettings) -> torch.optim.Optimizer:
    """The optimizer ``s.optimizer`` (adamw, adam, else SGD with momentum 0.9) over
    ``params`` with the learning rate and weight decay of ``s``."""
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay, momentum=0.9)


def make_scheduler(opt, s: LoopSettings):
    """Learning-rate schedule: ``warmup_cosine`` (per step: linear warm-up over
    ``s.warmup_epochs``, then cosine decay towards 1 % of ``s.lr`` at the end), ``cosine``
    (per epoch, annealing over ``s.epochs``) or constant."""
    if s.schedule == "warmup_cosine":
        import math

        total = max(1, s.epochs * s.steps_per_epoch)
        warm = min(total - 1, int(round(s.warmup_epochs * s.steps_per_epoch)))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.epochs))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    s = (seed * 1_000_003 + epoch * 9_176 + rank) % (2 ** 31)
    torch.manual_seed(s)
    random.seed(s)


def save_checkpoint(path: Path, model: nn.Module, opt, sched, state: LoopState,
                    extra: dict[str, Any]) -> None:
    """Atomically write everything needed to resume (rank 0 only): a ``resume`` checkpoint
    whose meta is ``extra`` (with the resume key) and whose training state holds the optimizer,
    scheduler, loop state and RNG states."""
    training = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "state": jsonable(state.__dict__),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    write_checkpoint(path, Checkpoint(RESUME_KIND, {}, model.state_dict(), extra, training))


def load_resume(path: Path, key: str, log: logging.Logger) -> Checkpoint | None:
    """The resume checkpoint at ``path`` if it exists and was written for resume key ``key``
    (logs and returns None for one written for other settings)."""
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, (RESUME_KIND,))
    if ckpt.meta.get("resume_key") != key or ckpt.training is None:
        log.warning("ignoring %s: written for other settings, inputs or model (fresh start)",
                    path)
        return None
    return ckpt


def start_ranks(log: logging.Logger) -> tuple[DistEnv, torch.device]:
    """Join this job's process group (:func:`init_distributed`): (where this rank sits, the
    device it trains on). Ranks other than 0 then log warnings only (root logger and ``log``)."""
    from specbridge.parallel.ddp import init_distributed

    env, device = init_distributed()
    if env.is_distributed:
        import socket

        hosts: list[Any] = [None] * env.world_size
        dist.all_gather_object(hosts, (socket.gethostname(), env.local_rank, str(device)))
        names = list(dict.fromkeys(h[0] for h in hosts))
        log.info("%d ranks on %d host(s) (%s; local ranks %s; devices %s), rendezvous at "
                 "%s:%s via %s", env.world_size, len(names), ", ".join(names),
                 ",".join(str(h[1]) for h in hosts), ",".join(h[2] for h in hosts),
                 env.master_addr, env.master_port, env.launcher)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
        log.setLevel(logging.WARNING)
    return env, device


def training_workdir(checkpoint: str | Path, workdir: str | Path | None = None) -> Path:
    """Where a training stage keeps its resumable checkpoints: ``workdir``, default the
    output ``checkpoint`` path without its suffix (created, absolute)."""
    out = Path(workdir or Path(checkpoint).with_suffix("")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def resume_key(model: nn.Module, settings: LoopSettings, extra: dict[str, Any]) -> str:
    """A digest of what a checkpoint must match to be resumed: the loop settings, the names,
    shapes and trainability of the parameters, and the caller's ``extra``."""
    import hashlib
    import json

    params = [(n, list(p.shape), p.requires_grad) for n, p in model.named_parameters()]
    blob = json.dumps({"settings": settings.__dict__, "params": params,
                       "extra": {k: str(v) for k, v in sorted(extra.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(model: nn.Module, loss_sum: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
          train_batches: Callable[[int], Iterable[Any]],
          validate: Callable[[nn.Module], float], settings: LoopSettings, workdir: str | Path,
          env: DistEnv, device: torch.device, extra: dict[str, Any] | None = None,
          log: logging.Logger | None = None) -> tuple[nn.Module, LoopState]:
    """Train ``model`` (already on ``device``) until ``settings.epochs`` or early stopping.

    ``loss_sum(model, batch)`` returns this rank's summed loss and its number of terms; the
    loop divides by the global count so that W ranks reproduce one rank's gradient.
    ``train_batches(epoch)`` yields this rank's batches; ``validate(model)`` returns the
    validation loss (the same on every rank). Checkpoints: ``workdir/last.pt`` every epoch,
    ``workdir/best.pt`` on improvement; an existing last.pt is resumed. Returns the model with
    the best weights loaded, and the final state.
    """
    log = log or logging.getLogger("specbridge.training")
    workdir = Path(workdir)
    extra = extra or {}
    raw = model
    if env.is_distributed:
        if device.type == "cuda":
            raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        else:
            from specbridge.models.norm import convert_global_batchnorm
            raw = convert_global_batchnorm(raw)
    params = [p for p in raw.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings)
    sched = make_scheduler(opt, settings)
    state = LoopState()
    last = workdir / "last.pt"
    key = resume_key(raw, settings, extra)
    extra = {**extra, "resume_key": key}
    resumed = load_resume(last, key, log)
    if resumed is not None:
        raw.load_state_dict(resumed.state_dict)
        opt.load_state_dict(resumed.training["optimizer"])
        sched.load_state_dict(resumed.training["scheduler"])
        state = LoopState(**resumed.training["state"])
        log.info("resumed from %s after epoch %d (best val %.5g at epoch %d)", last,
                 state.epoch, state.best_val, state.best_epoch)
    net = raw
    if env.is_distributed:
        net = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    world = env.world_size
    steps = 0  # batches this process has trained on (for fault injection)
    while state.epoch < settings.epochs and state.bad_epochs < settings.patience:
        epoch = state.epoch
        _seed_epoch(settings.seed, epoch, env.rank)
        net.train()
        t0 = time.monotonic()
        tot = torch.zeros((), device=device)  # summed on the device: no sync per step
        nsamp, nbatch = 0, 0
        for batch in prefetched(train_batches(epoch)):
            with autocast:
                s, cnt = loss_sum(net, batch)
            count = torch.tensor([float(cnt)], device=device)
            if env.is_distributed:
                dist.all_reduce(count)
            loss = s * world / count.clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            if settings.per_step:
                sched.step()
            # this rank's mean loss per sample (loss is scaled by world for DDP's averaging of
            # gradients over the ranks, which applies to them only)
            tot += loss.detach().float().sum() * count[0] / (world * max(int(cnt), 1))
            nsamp += batch_size_of(batch)
            nbatch += 1
            steps += 1
            kill_point("train", env.rank, steps)
        if not settings.per_step:
            sched.step()
        dt = time.monotonic() - t0
        net.eval()
        with torch.no_grad():
            val = float(validate(raw))
        state.epoch = epoch + 1
        improved = val < state.best_val
        if improved:
            state.best_val, state.best_epoch, state.bad_epochs = val, epoch, 0
        else:
            state.bad_epochs += 1
        rec = {"epoch": epoch, "train_loss": float(tot) / max(nbatch, 1), "val_loss": val,
               "samples_per_s_per_rank": nsamp / max(dt, 1e-9),
               "lr": float(opt.param_groups[0]["lr"])}
        state.history.append(rec)
        log.info("epoch %d: train %.5g, val %.5g%s, %.0f samples/s per rank, lr %.3g", epoch,
                 rec["train_loss"], val, " (best)" if improved else "",
                 rec["samples_per_s_per_rank"], rec["lr"])
        if env.is_main:
            if improved:
                save_checkpoint(workdir / "best.pt", raw, opt, sched, state, extra)
            save_checkpoint(last, raw, opt, sched, state, extra)
        if env.is_distributed:
            dist.barrier()
    raw.load_state_dict(load_checkpoint(workdir / "best.pt", (RESUME_KIND,)).state_dict)
    return raw, state


def prefetched(batches: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """The items of ``batches`` in order, read ahead by up to ``depth`` items in a background
    thread, so that the next batches' shard reads overlap the current step (on a GPU the step
    is otherwise left waiting for the disk). An exception in the reader is raised here; closing
    the generator early stops the reader."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in batches:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((end, exc))

    reader = threading.Thread(target=read, name="batch-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item, exc = q.get()
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


def batch_size_of(batch: Any) -> int:
    """Number of samples in ``batch`` (the first dimension of its ``x``, or of itself)."""
    x = getattr(batch, "x", batch)
    return int(x.shape[0])
