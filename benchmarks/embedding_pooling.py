"""How much of the labels a SpecFormer's embedding keeps, by the way its output tokens are
pooled: validation linear probes (ridge on frozen, standardised embeddings; the same on the
pixels for reference) for token means over 1, 4, 8, 16 ... contiguous wavelength regions,
each without and with the stats token's output (``models.specformer.embed_stats_token``),
with the weights of a finished run's pretrained SpecFormer (pooling has no weights, so one
checkpoint serves every setting).

    python benchmarks/embedding_pooling.py [--results results] [--regions 1 4 8 16]
        [--rows 4000]

Rows: labelled LAMOST spectra of the run's preprocessed set, its training and validation
splits (by star, as pretraining splits them), at most ``--rows`` of each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def pooled(net, flux: np.ndarray, ivar: np.ndarray, regions: list[int]
           ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({regions: (n, regions x d_model)} patch-token means over that many regions, the stats
    token's output (n, d_model)), one encoder pass per batch for every setting."""
    import torch

    from specbridge.models.specformer import pool_tokens

    out: dict[int, list[np.ndarray]] = {r: [] for r in regions}
    stats: list[np.ndarray] = []
    with torch.no_grad():
        for a in range(0, len(flux), 256):
            full, _, _ = net.encode_all(torch.from_numpy(flux[a:a + 256]),
                                        torch.from_numpy(ivar[a:a + 256]))
            tok = full[:, 1:]
            stats.append(full[:, 0].numpy())
            for r in regions:
                out[r].append(pool_tokens(tok, r).numpy())
    return {r: np.concatenate(v) for r, v in out.items()}, np.concatenate(stats)


def split_rows(index: Path, labels: list[str], split: str, val_fraction: float, rows: int):
    """(flux, ivar, network input, labels) of at most ``rows`` labelled spectra of a split."""
    from specbridge.training.data import LabelledShards

    ds = LabelledShards(str(index), labels, split, val_fraction, with_ivar=True)
    parts: dict[str, list[np.ndarray]] = {"flux": [], "ivar": [], "x": [], "y": []}
    n = 0
    for b in ds.batches(0, 256, 0, shuffle=True, drop_last=False):
        for k in parts:
            parts[k].append(getattr(b, k))
        n += len(b.y)
        if n >= rows:
            break
    return tuple(np.concatenate(parts[k])[:rows] for k in ("flux", "ivar", "x", "y"))


def main() -> None:
    import torch

    from specbridge.config import load_config
    from specbridge.models.checkpoint import load_model
    from specbridge.models.embedding_quality import linear_probe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--regions", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--rows", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.results / "config" / "resolved.yaml")
    labels = list(cfg["labels"])
    net, _ = load_model(args.results / "models" / "specformer" / "pretrained.pt",
                        kinds=("specformer",))
    net.eval()
    index = args.results / "preprocessed" / "lamost" / "index.h5"
    vf = float(cfg["training"]["val_fraction"])
    tr = split_rows(index, labels, "train", vf, args.rows)
    va = split_rows(index, labels, "val", vf, args.rows)
    (et, st), (ev, sv) = (pooled(net, tr[0], tr[1], args.regions),
                          pooled(net, va[0], va[1], args.regions))
    print(f"{len(tr[3])} training, {len(va[3])} validation spectra; validation robust sigma "
          "of ridge probes")
    print("| features | dims | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for r in args.regions:
        sig = [linear_probe(et[r], tr[3][:, i], ev[r], va[3][:, i]) for i in range(len(labels))]
        print(f"| tokens, {r} region(s) | {et[r].shape[1]} | "
              + " | ".join(f"{s:.4g}" for s in sig) + " |")
        xt, xv = np.hstack([et[r], st]), np.hstack([ev[r], sv])
        sig = [linear_probe(xt, tr[3][:, i], xv, va[3][:, i]) for i in range(len(labels))]
        print(f"| tokens, {r} region(s) + the stats token | {xt.shape[1]} | "
              + " | ".join(f"{s:.4g}" for s in sig) + " |")
    sig = [linear_probe(tr[2], tr[3][:, i], va[2], va[3][:, i]) for i in range(len(labels))]
    print(f"| pixels | {tr[2].shape[1]} | " + " | ".join(f"{s:.4g}" for s in sig) + " |")


if __name__ == "__main__":
    main()
