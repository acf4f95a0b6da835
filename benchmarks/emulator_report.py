"""Emulator validation: leave-out residuals per label regime, and a mock against a real MILES
star of similar labels.

    python benchmarks/emulator_report.py [--shared ../shared/data] [--figure docs/figures/...]

Prints a markdown table of the held-out stars' rms residual in log flux (approximately the
fractional flux error) over 4000-5600 A (the common grid) and over the whole MILES range.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from specbridge.mock import physics
from specbridge.mock.emulator import MilesEmulator, holdout_residuals, in_domain
from specbridge.mock.miles import load_miles

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" /
                    "mock_vs_miles.png")
    args = ap.parse_args()
    lib = load_miles(args.shared / "miles")
    usable = lib.complete & in_domain(lib.teff, lib.logg, lib.feh)
    r = holdout_residuals(lib, seed=1, frac=0.1)
    print(f"MILES stars: {lib.teff.size}, with Teff/logg/[Fe/H]: {lib.complete.sum()}, "
          f"inside the emulator domain: {usable.sum()}; trained on {int(r['n_train'])}, "
          f"held out {r['rms'].size}\n")
    print("| held-out stars | n | median rms 4000-5600 A | median rms 3540-7410 A |")
    print("|---|---|---|---|")
    regimes = [("all", np.ones(r["teff"].size, bool)),
               ("[Fe/H] <= -1 (metal-poor)", r["feh"] <= -1), ("[Fe/H] > -1", r["feh"] > -1),
               ("dwarfs (log g >= 3.5)", r["logg"] >= 3.5),
               ("giants (log g < 3.5)", r["logg"] < 3.5),
               ("Teff < 5000 K", r["teff"] < 5000), ("Teff >= 5000 K", r["teff"] >= 5000)]
    for name, m in regimes:
        if m.any():
            print(f"| {name} | {m.sum()} | {np.median(r['rms_grid'][m]):.3f} | "
                  f"{np.median(r['rms'][m]):.3f} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a held-out metal-poor giant and a held-out solar-metallicity dwarf
    emu = MilesEmulator.fit(lib, ~np.isin(lib.ids, r["ids"]))
    held = np.isin(lib.ids, r["ids"])
    picks = [int(np.flatnonzero(held & (lib.feh <= -1) & (lib.logg < 3.5))[0]),
             int(np.flatnonzero(held & (lib.feh > -0.3) & (lib.logg > 4))[0])]
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 6), sharex=True)
    for ax, i in zip(axes, picks, strict=True):
        sel = (lib.wave_vac > 3900) & (lib.wave_vac < 5700)
        norm = np.median(lib.flux[i][(lib.wave_vac > 5000) & (lib.wave_vac < 5600)])
        model = emu.flux(lib.teff[[i]], lib.logg[[i]], lib.feh[[i]])
        alpha = physics.alpha_response(emu.wave, model, lib.feh[[i]],
                                       physics.miles_alpha_trend(lib.feh[[i]]) + 0.2)
        ax.plot(lib.wave_vac[sel], lib.flux[i][sel] / norm, "k", lw=0.8,
                label=f"MILES m{lib.ids[i]:04d} (held out)")
        ax.plot(emu.wave[sel], model[0][sel], "C1", lw=0.8, label="emulator at its labels")
        ax.plot(emu.wave[sel], alpha[0][sel], "C0", lw=0.6, alpha=0.7,
                label="emulator, [alpha/Fe] + 0.2")
        ax.set_title(f"Teff {lib.teff[i]:.0f} K, log g {lib.logg[i]:.2f}, "
                     f"[Fe/H] {lib.feh[i]:+.2f}", fontsize=9)
        ax.set_ylabel("flux / median(5000-5600 A)")
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("vacuum wavelength (A)")
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    shown = args.figure.relative_to(REPO) if args.figure.is_relative_to(REPO) else args.figure
    print(f"\nfigure: {shown}")


if __name__ == "__main__":
    main()
