"""Diagnosis of the real LAMOST DR1 [Fe/H] offset (issue #16): where it sits, whether
stellar rotation (absent from the mock) could cause it, and what differs between a real
spectrum and the mock spectrum of its reference labels.

    python benchmarks/hot_star_offset.py [--results results] [--figure FILE]

1. The DR1 pilot set's residuals (zero-shot spectrum MLP minus the DR1 catalogue) by reference
   Teff and S/N bin: median [Fe/H], Teff and log g residuals.
2. Rotation: mock LAMOST validation spectra (preprocessed, R = 1800) broadened by a rotation
   profile (linear limb darkening 0.6) of v sin i = 30-150 km/s, integrated over the 69 km/s
   pixels of the common grid, then predicted by the same model: the median change of each
   label per Teff bin. Stars hotter than the Kraft break (~6,250 K) rotate at tens of km/s;
   the mock has no rotation, so if the offset came from there, broadening mock hot stars
   would move their [Fe/H] down by about the real offset.
3. Real against mock at the same labels: for each real star (DR1 pilot, PyLASP) the mock
   composite of its catalogue labels, the median of the 15 mock LAMOST spectra (S/N > 30)
   nearest in (Teff / 100 K, log g / 0.2, [Fe/H] / 0.1). (a) The same MLP on the composites:
   if it recovers the catalogue labels, the model is right on the mock and the offset comes
   from how the real spectra differ from it. (b) Line-depth ratios real / mock (1 - flux,
   inverse-variance weighted least squares) in the Balmer lines (+-20 A of H-delta, H-gamma,
   H-beta) and in the metal lines (the rest, > 4150 A). (c) Occlusion: each 200 A chunk of
   the real spectrum replaced by the composite's, and the real spectrum's smooth shape (a
   101-pixel running mean of its 61-pixel running median ratio to the composite) swapped for
   the composite's. (d) A figure of the median residual real - composite per Teff bin.
4. The emulator against the MILES stars it is built from (10-fold cross-validated residuals
   ln(MILES / emulator)), per line window minus its 25 A surroundings, by Teff: whether the
   mock's metal lines at a given label are MILES' own.
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


TEFF_BINS = ((3500, 5000), (5000, 6000), (6000, 8000))


def _read_rows(index: Path, cols: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns ``cols`` of every shard of a preprocessed index, concatenated."""
    from specbridge.io.shards import read_index, read_shard

    parts = [read_shard(s["path"], cols) for s in read_index(str(index))]
    return {c: np.concatenate([p[c] for p in parts]) for c in cols}


def mock_composites(results: Path, ref: np.ndarray, k: int = 15) -> np.ndarray:
    """(n, npix) median normalised flux of the ``k`` mock LAMOST spectra (S/N > 30) nearest to
    each row of ``ref`` (n, 3: Teff K, log g, [Fe/H] dex) in (Teff/100, log g/0.2, [Fe/H]/0.1)."""
    from specbridge import flags

    m = _read_rows(results / "preprocessed" / "lamost" / "index.h5",
                   ("flux", "labels", "flags", "snr"))
    ok = ~flags.is_fatal(m["flags"]) & np.isfinite(m["labels"][:, :3]).all(1) & (m["snr"] > 30)
    lab, flux = m["labels"][ok, :3], m["flux"][ok]
    scale = np.array([100.0, 0.2, 0.1])
    out = np.empty((len(ref), flux.shape[1]))
    for i, r in enumerate(ref):
        d = (((lab - r) / scale) ** 2).sum(1)
        out[i] = np.median(flux[np.argsort(d)[:k]], axis=0)
    return out


def real_against_mock(results: Path, name: str, figure: Path | None = None) -> list[str]:
    """Part 3 of the module docstring for the real set ``name``: markdown lines."""
    from astropy.table import Table
    from scipy.ndimage import median_filter, uniform_filter1d

    from specbridge.config import load_config
    from specbridge.inference.predict import Candidate, predict
    from specbridge.kernels.grid import LogGrid
    from specbridge.models.checkpoint import load_model
    from specbridge.training.data import network_input

    cfg = load_config(results / "config" / "resolved.yaml")
    grid = LogGrid.from_config(cfg["grid"])
    npix, wave = grid.npix, grid.wave
    t = Table.read(results / "real" / f"{name}.ecsv")
    t = t[np.isfinite(t["TEFF_REF"]) & np.isfinite(t["LOGG_REF"]) & np.isfinite(t["FEH_REF"])
          & np.isfinite(t["FEH_PRED"])]
    rows = _read_rows(results / "real" / name / "preprocessed" / "index.h5",
                      ("specid", "flux", "ivar"))
    where = {s: i for i, s in enumerate(rows["specid"])}
    j = np.array([where[s] for s in t["SPECID"]])
    flux, ivar = rows["flux"][j], rows["ivar"][j]
    ref = np.stack([np.asarray(t[c], float) for c in ("TEFF_REF", "LOGG_REF", "FEH_REF")], 1)
    comp = mock_composites(results, ref)
    net, ck = load_model(results / "models" / "mlp" / "pretrained.pt", kinds=("mlp",))
    cand = Candidate("mlp_pretrained", "mlp", "pretrained", "flux", net,
                     list(ck.meta["labels"]), np.asarray(ck.meta["label_mean"]),
                     np.asarray(ck.meta["label_std"]), "")
    it, ifeh = cand.labels.index("teff"), cand.labels.index("feh")

    def run(f: np.ndarray, iv: np.ndarray) -> np.ndarray:
        return predict(cand, network_input(f, iv), np.ones(len(f), bool))[0]

    bins = [(lo, hi, (ref[:, 0] >= lo) & (ref[:, 0] < hi)) for lo, hi in TEFF_BINS]
    head = " | ".join(f"{lo}-{hi} K: ΔTeff, Δ[Fe/H]" for lo, hi, _ in bins)
    out = [f"**{name}** ({len(t)} stars; n per bin: "
           + ", ".join(str(int(b.sum())) for *_, b in bins) + ")", "",
           f"| input to the pretrained MLP | {head} |", "|---|" + "---|" * len(bins)]

    def row(tag: str, v: np.ndarray) -> None:
        cells = [f"{np.median(v[b, it] - ref[b, 0]):+.0f} K, "
                 f"{np.median(v[b, ifeh] - ref[b, 2]):+.3f}" for *_, b in bins]
        out.append(f"| {tag} | " + " | ".join(cells) + " |")

    ones = np.ones_like(comp)
    row("real spectra", run(flux, ivar))
    row("mock composites of the same labels", run(comp, ones))
    for a, b in zip(range(4000, 5600, 200), range(4200, 5800, 200), strict=True):
        ch = (wave >= a) & (wave < b)
        f, iv = flux.copy(), ivar.copy()
        f[:, ch], iv[:, ch] = comp[:, ch], 1.0
        row(f"real, {a}-{b} A from the mock", run(f, iv))
    with np.errstate(divide="ignore", invalid="ignore"):
        shape = uniform_filter1d(median_filter(np.where(ivar > 0, flux / comp, 1.0),
                                               size=(1, 61)), 101, axis=1)
    row("real, smooth shape swapped for the mock's", run(flux / shape, ivar))
    row("mock, smooth shape swapped for the real's", run(comp * shape, ones))
    balmer = np.zeros(npix, bool)
    for c in (4102.9, 4341.7, 4862.7):  # vacuum
        balmer |= np.abs(wave - c) < 20
    metal = ~balmer & (wave > 4150)
    good = (t["SNR"] >= 20)
    ratios = np.array([[np.sum((ivar[i] * (1 - flux[i]) * (1 - comp[i]))[sel])
                        / np.sum((ivar[i] * (1 - comp[i]) ** 2)[sel]) for sel in (balmer, metal)]
                       for i in range(len(t))])
    out += ["", "| line-depth ratio real / mock (S/N >= 20) | "
            + " | ".join(f"{lo}-{hi} K" for lo, hi, _ in bins) + " |", "|---|" + "---|" * len(bins)]
    for k, tag in enumerate(("Balmer lines", "metal lines")):
        out.append(f"| {tag} | " + " | ".join(
            f"{np.median(ratios[b & good, k]):.3f} ({int((b & good).sum())})"
            if (b & good).any() else "-" for *_, b in bins) + " |")
    if figure is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4))
        for k, (lo, hi, b) in enumerate(bins):
            sel = b & good
            if sel.any():
                res = np.nanmedian(np.where(ivar[sel] > 0, flux[sel] - comp[sel], np.nan), 0)
                ax.plot(wave, res - 0.05 * k, lw=0.7,
                        label=f"{lo}-{hi} K ({int(sel.sum())}), offset {-0.05 * k:+.2f}")
        mean_hot = np.nanmedian(comp[bins[-1][2] & good], 0)
        ax.plot(wave, 0.25 * (mean_hot - 1) - 0.17, color="0.6", lw=0.6,
                label="mock composite (hottest bin) - 1, x 0.25")
        ax.set_xlabel("vacuum wavelength (A)")
        ax.set_ylabel("real - mock at the same labels")
        ax.set_title(f"{name}: median residual of real spectra against the mock of their labels")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(figure, dpi=120)
    return out


LINE_WINDOWS = {"H-delta": (4090, 4116), "Ca I 4227": (4222, 4234), "G band": (4295, 4315),
                "H-gamma": (4330, 4354), "H-beta": (4850, 4876), "Mg b": (5160, 5190),
                "Fe 5270": (5265, 5276), "Fe 5335": (5328, 5340)}


def emulator_line_residuals(miles_dir: Path) -> list[str]:
    """Part 4: median cross-validated line-window residual of MILES stars, [Fe/H] > -1."""
    from specbridge.mock.emulator import crossval_residuals
    from specbridge.mock.miles import load_miles

    cv = crossval_residuals(load_miles(miles_dir))
    w, r = cv["wave"], cv["resid"]
    out = ["| MILES stars, [Fe/H] > -1 | n | " + " | ".join(LINE_WINDOWS) + " |",
           "|---|---|" + "---|" * len(LINE_WINDOWS)]
    for lo, hi in ((3800, 5000), (5000, 5500), (5500, 6000), (6000, 6500), (6500, 7500)):
        sel = (cv["teff"] >= lo) & (cv["teff"] < hi) & (cv["feh"] > -1)
        cells = []
        for a, b in LINE_WINDOWS.values():
            line = (w >= a) & (w < b)
            side = ((w >= a - 25) & (w < a)) | ((w >= b) & (w < b + 25))
            cells.append(f"{np.median(r[sel][:, line].mean(1) - r[sel][:, side].mean(1)):+.4f}")
        out.append(f"| {lo}-{hi} K | {int(sel.sum())} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--figure", type=Path, default=None,
                   help="write the DR1 pilot set's residual figure (part 3d) here")
    p.add_argument("--only-mock-comparison", action="store_true", help="parts 3 and 4 only")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent
                   / "shared" / "data", help="reference data (MILES for part 4)")
    a = p.parse_args()
    if not a.only_mock_comparison:
        print("\n".join(dr1_residuals(a.results)))
        print()
        print("\n".join(rotation_test(a.results)))
        print()
    for name in ("dr1_pilot", "pylasp"):
        print("\n".join(real_against_mock(a.results, name,
                                            a.figure if name == "dr1_pilot" else None)))
        print()
    print("\n".join(emulator_line_residuals(a.shared / "miles")))


if __name__ == "__main__":
    main()
