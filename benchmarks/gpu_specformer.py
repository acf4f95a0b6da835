"""SpecFormer throughput on one GPU (or the CPU): training steps and embedding, per size and
precision, on real preprocessed spectra.

    python benchmarks/gpu_specformer.py --spectra results/preprocessed/lamost/index.h5
        [--sizes demo benchmark paper] [--batches 64 256] [--steps 30] [--device cuda]

For each SpecFormer size of the ladder (``demo``: the embedded default, config.yaml;
``benchmark`` and ``paper``: the overlays in config/sizes/) and each precision
(bf16 autocast, as the training loop uses on CUDA, and float32), it times ``--steps`` full
training steps (span mask, masked-pixel reconstruction loss, backward, gradient clipping,
AdamW) after warm-up steps, then the embedding forward pass used at inference, and prints
samples/s and the peak device memory. The spectra are those of the index (cycled), so the
masks, the usable pixels and the standardisation are the real ones. Ratios are against float32
on the same device in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("demo", "benchmark", "paper")


def size_arch(size: str) -> dict:
    """models.specformer of a size: the embedded default (config.yaml), with the size's
    overlay on top."""
    from specbridge.config import load_config

    base = load_config(ROOT / "config.yaml")
    arch = dict(base["models"]["specformer"])
    if size != "demo":
        over = yaml.safe_load((ROOT / "config" / "sizes" / f"{size}.yaml").read_text())
        arch.update(over["models"]["specformer"])
    return arch


def load_spectra(index: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar), each (n, npix) float32: the first ``n`` spectra of a shard index."""
    from specbridge.io.shards import read_index, read_shard

    flux, ivar, got = [], [], 0
    for s in read_index(index):
        d = read_shard(s["path"], ("flux", "ivar"))
        flux.append(d["flux"])
        ivar.append(d["ivar"])
        got += len(d["flux"])
        if got >= n:
            break
    return np.concatenate(flux)[:n], np.concatenate(ivar)[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(net, flux, ivar, batch: int, steps: int, warmup: int, bf16: bool,
                  sc: dict, device: torch.device) -> float:
    """Training samples/s: span mask, masked loss, backward, clip, AdamW step."""
    from specbridge.models.specformer import span_mask

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
    n = flux.shape[0]
    ac = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
          else torch.autocast(device.type, enabled=False))
    net.train()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        lo = (i * batch) % (n - batch)
        f, v = flux[lo:lo + batch], ivar[lo:lo + batch]
        hidden = span_mask(batch, f.shape[1], sc["mask_fraction"], sc["mask_span"]).to(device)
        with ac:
            loss = net.masked_loss(f, v, hidden)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


@torch.no_grad()
def time_embedding(net, flux, ivar, batch: int, steps: int, bf16: bool,
                   device: torch.device) -> float:
    """Embedding (inference) samples/s."""
    ac = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
          else torch.autocast(device.type, enabled=False))
    net.eval()
    n = flux.shape[0]
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        lo = (i * batch) % (n - batch)
        with ac:
            net.embed(flux[lo:lo + batch], ivar[lo:lo + batch])
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spectra", type=Path, required=True, help="a preprocessed index.h5")
    ap.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    from specbridge.models.checkpoint import build_model

    nmax = max(args.batches) * 4
    flux_np, ivar_np = load_spectra(args.spectra, nmax)
    flux = torch.from_numpy(flux_np).to(device)
    ivar = torch.from_numpy(ivar_np).to(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {flux.shape[0]} real spectra cycled")
    print("| size | parameters | batch | precision | train samples/s | vs fp32 | "
          "embed samples/s | vs fp32 | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        arch = {"npix": int(flux.shape[1]), **size_arch(size)}
        for batch in args.batches:
            rates = {}
            for bf16 in (False, True):
                torch.manual_seed(0)
                net = build_model("specformer", arch).to(device)
                npar = sum(p.numel() for p in net.parameters())
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                tr = time_training(net, flux, ivar, batch, args.steps, args.warmup, bf16,
                                   arch, device)
                em = time_embedding(net, flux, ivar, batch, args.steps, bf16, device)
                peak = (torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else float("nan"))
                rates[bf16] = (tr, em)
                prec = "bf16 autocast" if bf16 else "float32"
                r_tr = tr / rates[False][0]
                r_em = em / rates[False][1]
                print(f"| {size} | {npar / 1e6:.2f} M | {batch} | {prec} | {tr:,.0f} | "
                      f"{r_tr:.2f} | {em:,.0f} | {r_em:.2f} | {peak:.2f} |", flush=True)
                del net
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
