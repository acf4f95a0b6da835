"""Diagnosis of the real LAMOST DR1 [Fe/H] offset (issue #16): where it sits, and whether
stellar rotation (absent from the mock) could cause it.

    python benchmarks/hot_star_offset.py [--results results]

1. The DR1 pilot set's residuals (zero-shot spectrum MLP minus the DR1 catalogue) by reference
   Teff and S/N bin: median [Fe/H], Teff and log g residuals.
2. Rotation: mock LAMOST validation spectra (preprocessed, R = 1800) broadened by a rotation
   profile (linear limb darkening 0.6) of v sin i = 30-150 km/s, integrated over the 69 km/s
   pixels of the common grid, then predicted by the same model: the median change of each
   label per Teff bin. Stars hotter than the Kraft break (~6,250 K) rotate at tens of km/s;
   the mock has no rotation, so if the offset came from there, broadening mock hot stars
   would move their [Fe/H] down by about the real offset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

C_KMS = 299792.458


def dr1_residuals(results: Path) -> list[str]:
    """Median residuals of the DR1 pilot set per reference-Teff and S/N bin."""
    from astropy.table import Table

    t = Table.read(results / "real" / "dr1_pilot.ecsv")
    t = t[np.isfinite(t["FEH_PRED"]) & np.isfinite(t["FEH_REF"])]
    d = {k: np.asarray(t[f"{k}_PRED"] - t[f"{k}_REF"]) for k in ("TEFF", "LOGG", "FEH")}
    out = ["| bin | n | [Fe/H] | Teff (K) | log g |", "|---|---|---|---|---|"]
    for name, col, bins in (("Teff", "TEFF_REF", ((3500, 5000), (5000, 5500), (5500, 6000),
                                                  (6000, 6500), (6500, 8000))),
                            ("S/N", "SNR", ((0, 20), (20, 50), (50, 1e4)))):
        for lo, hi in bins:
            m = (t[col] >= lo) & (t[col] < hi)
            if m.sum():
                out.append(f"| {name} {lo:g}-{hi:g} | {int(m.sum())} | "
                           f"{np.median(d['FEH'][m]):+.3f} | {np.median(d['TEFF'][m]):+.0f} | "
                           f"{np.median(d['LOGG'][m]):+.2f} |")
    out.append(f"| all | {len(t)} | {np.median(d['FEH']):+.3f} | {np.median(d['TEFF']):+.0f} "
               f"| {np.median(d['LOGG']):+.2f} |")
    return out


def rotation_kernel(vsini: float, dv: float, eps: float = 0.6, sub: int = 50) -> np.ndarray:
    """The rotation profile of ``vsini`` (km/s), linear limb darkening ``eps``, integrated
    over pixels of ``dv`` km/s, centred, normalised (odd length)."""
    if vsini <= 0:
        return np.array([1.0])
    half = int(np.ceil(vsini / dv)) + 1
    npx = 2 * half + 1
    edges = np.linspace(-half - 0.5, half + 0.5, npx * sub + 1)
    x = 0.5 * (edges[1:] + edges[:-1]) * dv / vsini
    y = np.clip(1 - x ** 2, 0, None)
    k = np.where(np.abs(x) < 1, 2 * (1 - eps) * np.sqrt(y) + np.pi * eps / 2 * y, 0.0)
    kp = k.reshape(npx, sub).sum(1)
    return kp / kp.sum()


def rotation_test(results: Path) -> list[str]:
    """Median label changes of mock LAMOST validation spectra broadened by rotation."""
    import torch

    from specbridge.config import load_config
    from specbridge.inference.predict import load_candidates, predict
    from specbridge.training.data import LabelledShards, network_input

    torch.set_num_threads(1)
    cfg = load_config(results / "config" / "resolved.yaml")
    dv = C_KMS * np.log(10) * cfg["grid"]["log10_lambda_step"]
    ds = LabelledShards(str(results / "preprocessed" / "lamost" / "index.h5"),
                        ["teff", "logg", "feh", "alpha_fe"], "val",
                        cfg["training"]["val_fraction"], with_ivar=True)
    parts: dict[str, list[np.ndarray]] = {"f": [], "i": [], "y": []}
    for b in ds.batches(0, 512, 0, shuffle=False, drop_last=False):
        parts["f"].append(b.flux)
        parts["i"].append(b.ivar)
        parts["y"].append(b.y)
    flux, ivar, y = (np.concatenate(parts[k]) for k in ("f", "i", "y"))
    cand = load_candidates([results / "models" / "mlp" / "finetuned_zeroshot.pt"])[0]
    out = ["| mock Teff (K) | n | v sin i (km/s) | Δ[Fe/H] | ΔTeff (K) | Δlog g |",
           "|---|---|---|---|---|---|"]
    for lo, hi in ((4500, 5500), (6000, 6500), (6500, 8000)):
        m = (y[:, 0] >= lo) & (y[:, 0] < hi) & np.isfinite(y[:, 2])
        base = None
        for vs in (0, 30, 60, 100, 150):
            k = rotation_kernel(vs, dv)
            f = np.where(ivar[m] > 0, flux[m], 1.0)
            f = np.stack([np.convolve(r, k, mode="same") for r in f]).astype(np.float32)
            v, _ = predict(cand, network_input(f, ivar[m]), np.ones(int(m.sum()), bool))
            base = v if base is None else base
            d = np.median(v - base, axis=0)
            if vs:
                out.append(f"| {lo}-{hi} | {int(m.sum())} | {vs} | {d[2]:+.3f} | "
                           f"{d[0]:+.0f} | {d[1]:+.2f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results"))
    a = p.parse_args()
    print("\n".join(dr1_residuals(a.results)))
    print()
    print("\n".join(rotation_test(a.results)))


if __name__ == "__main__":
    main()
