"""How the pretrained (zero-shot) spectrum MLP and embedding MLP degrade with S/N, on the same
LAMOST validation stars degraded to DESI-like S/N.

The embedded default's LAMOST spectra have median S/N 55, its DESI spectra 9; this separates the
S/N part of the LAMOST -> DESI gap from the rest. Each validation spectrum above ``--min-snr`` is
degraded to S/N 30, 15, 8 and 5 per pixel of the common grid (noise added, inverse variance
scaled: :func:`specbridge.training.augment.degrade_to_snr`, seeded), embedded
with the run's SpecFormer, and predicted by both pretrained models. Prints, per S/N and label,
robust sigma of each and their ratio (embedding / spectrum) with a 68 % bootstrap interval over
stars.

    python benchmarks/snr_sensitivity.py [--results results] [--min-snr 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from specbridge.evaluation.bootstrap import paired_ratio
from specbridge.evaluation.metrics import robust_sigma
from specbridge.inference.predict import load_candidates
from specbridge.models.checkpoint import load_model
from specbridge.stages.embed import embed_rows
from specbridge.training.augment import degrade_to_snr, spectrum_snr
from specbridge.training.data import LabelledShards, network_input

LEVELS = (None, 30.0, 15.0, 8.0, 5.0)
UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "alpha_fe": "dex"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--min-snr", type=float, default=30.0,
                    help="validation spectra above this S/N are used")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    r = args.results
    mlp, emb = load_candidates([r / "models/mlp/finetuned_zeroshot.pt",
                                r / "models/emb_mlp/finetuned_zeroshot.pt"])
    sf, ck = load_model(r / "models/specformer/pretrained.pt", ("specformer",))
    em = np.asarray(ck.meta["embed_mean"], np.float32)
    es = np.asarray(ck.meta["embed_std"], np.float32)
    val_fraction = float(ck.meta["training"]["val_fraction"])
    val = LabelledShards(str(r / "preprocessed/lamost/index.h5"), mlp.labels, "val",
                         val_fraction, with_ivar=True)
    flux, ivar, lab = [], [], []
    for b in val.batches(0, 4096, 0, shuffle=False, drop_last=False):
        flux.append(b.flux)
        ivar.append(b.ivar)
        lab.append(b.y)
    flux, ivar = np.concatenate(flux), np.concatenate(ivar)
    lab = np.concatenate(lab).astype(np.float64)
    snr = spectrum_snr(torch.from_numpy(flux), torch.from_numpy(ivar)).numpy()
    keep = snr > args.min_snr
    flux, ivar, lab = flux[keep], ivar[keep], lab[keep]
    print(f"{keep.sum()} LAMOST validation spectra with S/N > {args.min_snr:g} (of "
          f"{keep.size}); median S/N {np.median(snr[keep]):.0f}\n")
    print("| S/N | label | spectrum MLP | embedding MLP | ratio (68 %) |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    use = np.ones(len(flux), bool)
    for level in LEVELS:
        if level is None:
            f, i = flux, ivar
        else:
            f, i = (a.numpy() for a in degrade_to_snr(
                torch.from_numpy(flux), torch.from_numpy(ivar),
                torch.full((len(flux),), level), gen))
        pm, _ = mlp.net(torch.from_numpy(network_input(f, i)))
        pe, _ = emb.net(torch.from_numpy(embed_rows(sf, f, i, use, em, es)))
        res_m = pm.detach().double().numpy() * mlp.std + mlp.mean - lab
        res_e = pe.detach().double().numpy() * emb.std + emb.mean - lab
        for j, name in enumerate(mlp.labels):
            ok = np.isfinite(lab[:, j])
            pr = paired_ratio("robust_sigma", res_e[ok, j], res_m[ok, j], n_boot=args.n_boot)
            print(f"| {'as observed' if level is None else f'{level:g}'} | {name} "
                  f"({UNITS.get(name, '')}) | {robust_sigma(res_m[ok, j]):.3g} | "
                  f"{robust_sigma(res_e[ok, j]):.3g} | {pr.ratio:.2f} "
                  f"[{pr.lo:.2f}, {pr.hi:.2f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
