"""Preprocessing kernels against the peer implementations, per core, in one run.

    python benchmarks/preprocess_kernels.py [--n 2000] [--shared ../shared/data] [--peers-only]

Needs the peers in the environment: `make bench-env` (spectres==2.2.2 with spectres_numba,
desispec==0.70.0 + desiutil for desispec.interpolation.resample_flux). Input: DESI B-arm spectra
(2751 pixels with ivar) of the real targets in ../shared/data/desi, repeated to --n spectra,
resampled onto the common grid (1462 bins). One thread (NUMBA_NUM_THREADS=1): figures are per
core. Prints spectra/s and ratios against the peers measured in the same run.

Each peer is timed in its fastest documented form, as its users call it: spectres and
spectres_numba take a 2-D flux array (one row per spectrum) with its errors in one call;
desispec's resample_flux takes one 1-D spectrum per call (its own callers loop over fibres), so
that is its only form. The one-spectrum-per-call figures of spectres are printed too, labelled.
--peers-only times the peers and specbridge's resampling only (no continuum, no full pipeline).
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from specbridge.io import desi  # noqa: E402
from specbridge.kernels import LogGrid, pixel_edges, resample_rest_frame  # noqa: E402
from specbridge.kernels.pipeline import (  # noqa: E402
    PreprocessSettings,
    nominal_desi_sigma_aa,
    preprocess_batch,
)

REPO = Path(__file__).resolve().parents[1]


def best_rate(func, n: int, repeats: int = 3) -> float:
    """Spectra per second of the best of ``repeats`` timed calls of ``func()`` (n spectra)."""
    func()  # warm-up: JIT compilation, caches
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t)
    return n / best


def scipy_continuum_peer(flux: np.ndarray) -> np.ndarray:
    """The per-spectrum SciPy continuum of docs/design.md: median filter 7, Savitzky-Golay, ten
    iterated degree-5 upper-envelope polynomial fits."""
    from scipy.signal import medfilt, savgol_filter

    x = np.linspace(-1, 1, flux.size)
    sm = savgol_filter(medfilt(flux, 7), 21, 3)
    use = np.ones(flux.size, bool)
    for _ in range(10):
        c = np.polyfit(x[use], sm[use], 5)
        model = np.polyval(c, x)
        r = sm - model
        s = r[use].std()
        use = (r > -1.0 * s) & (r < 3 * s)
    return flux / np.polyval(c, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--peers-only", action="store_true",
                    help="time the peers and specbridge's resampling only")
    args = ap.parse_args()
    rows = []
    for f in sorted((args.shared / "desi").glob("coadd-*.fits")):
        a = desi.read_arm(f, "B", parts=("FLUX", "IVAR", "MASK"))
        good = (a.ivar > 0).mean(axis=1) > 0.5
        rows += [(a.wave, a.flux[i], a.ivar[i], a.mask[i]) for i in np.flatnonzero(good)]
    wave = rows[0][0]
    reps = -(-args.n // len(rows))
    flux = np.tile(np.stack([r[1] for r in rows]), (reps, 1))[: args.n].astype(np.float64)
    ivar = np.tile(np.stack([r[2] for r in rows]), (reps, 1))[: args.n].astype(np.float64)
    mask = np.tile(np.stack([r[3] for r in rows]), (reps, 1))[: args.n]
    flux += 5.0  # real sky-subtracted targets hover near 0; keep the continuum positive
    z = np.full(args.n, 1e-4)
    n = args.n
    grid = LogGrid()
    gw, ein, eout = grid.wave, pixel_edges(wave), grid.edges
    err = 1 / np.sqrt(np.where(ivar > 0, ivar, 1e-10))
    res = {}
    res["numpy.interp (flux only; floor)"] = best_rate(
        lambda: [np.interp(gw, wave, flux[i]) for i in range(n)], n)
    try:
        from desispec.interpolation import resample_flux

        # 1-D only (np.interp inside): one spectrum per call is how desispec itself calls it
        res["desispec resample_flux (1-D API: one spectrum per call)"] = best_rate(
            lambda: [resample_flux(gw, wave, flux[i], ivar[i]) for i in range(n)], n)
    except ImportError:
        print("desispec not installed (make bench-env): skipped")
    try:
        from spectres.spectral_resampling import spectres
        from spectres.spectral_resampling_numba import spectres_numba

        # spectres needs the output grid strictly inside the input: it is (3600-5800 A).
        # Documented form: a 2-D flux array (spectra x pixels) and its errors in one call.
        res["spectres_numba (2-D batch call, with errs)"] = best_rate(
            lambda: spectres_numba(gw, wave, flux, err), n)
        res["spectres (NumPy; 2-D batch call, with errs)"] = best_rate(
            lambda: spectres(gw, wave, flux, err, verbose=False), n)
        res["spectres_numba (one spectrum per call)"] = best_rate(
            lambda: [spectres_numba(gw, wave, flux[i], err[i]) for i in range(n)], n)
        m = min(n, 200)  # ~50 spectra/s this way: a subset is enough
        res["spectres (NumPy; one spectrum per call)"] = best_rate(
            lambda: [spectres(gw, wave, flux[i], err[i], verbose=False) for i in range(m)], m,
            repeats=1)
    except ImportError:
        print("spectres not installed (make bench-env): skipped")
    res["specbridge resample (shift + ivar + mask)"] = best_rate(
        lambda: resample_rest_frame(ein, flux, ivar, mask, z, eout), n)
    if args.peers_only:
        report(res, n, grid)
        return
    f0, iv0, _ = resample_rest_frame(ein, flux, ivar, mask, z, eout)
    m = min(n, 300)
    res["SciPy continuum (per spectrum, peer)"] = best_rate(
        lambda: [scipy_continuum_peer(f0[i]) for i in range(m)], m, repeats=1)
    cfg = PreprocessSettings(grid, True, 5, 7, 10, None)
    res["specbridge full: shift+resample+continuum+masks"] = best_rate(
        lambda: preprocess_batch(wave, flux, ivar, mask, z, cfg), n)
    cfg_b = PreprocessSettings(grid, True, 5, 7, 10, 1800.0)
    sig = nominal_desi_sigma_aa(wave)
    res["specbridge full + broadening to R=1800"] = best_rate(
        lambda: preprocess_batch(wave, flux, ivar, mask, z, cfg_b, sig), n)
    report(res, n, grid)


def report(res: dict[str, float], n: int, grid: LogGrid) -> None:
    ours = res["specbridge resample (shift + ivar + mask)"]
    print(f"\n{n} DESI B-arm spectra (2751 px) -> {grid.npix} bins, one core\n")
    print("| implementation | spectra/s/core | specbridge resample / this |")
    print("|---|---|---|")
    for name, rate in res.items():
        print(f"| {name} | {rate:,.0f} | {ours / rate:.2f} |")


if __name__ == "__main__":
    main()
