"""A spectral emulator fitted to the MILES stars: log flux as a cubic polynomial in the labels.

In the manner of The Cannon, every pixel of ``log(flux / median flux)`` on the MILES grid
(vacuum wavelengths, 3541-7412 A, FWHM 2.5 A) is a polynomial in the scaled labels

    x1 = (5040 K / Teff - 0.9) / 0.2,  x2 = (log g - 3) / 1.5,  x3 = ([Fe/H] + 0.5) / 0.8

with all 20 terms up to third order, fitted by ridge-regularised least squares to the MILES
stars with all three labels inside the domain below. Outside the domain it extrapolates
smoothly, so the mock's labels are drawn inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np

from specbridge.mock.miles import MilesLibrary

DOMAIN = {"teff": (3800.0, 7500.0), "logg": (0.0, 5.2), "feh": (-3.0, 0.6)}
NORM_RANGE = (5000.0, 5600.0)  # Angstrom, vacuum: flux normalised by its median here


def scaled_labels(teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """(n, 3) scaled labels x1, x2, x3 (module docstring) for arrays of shape (n,)."""
    return np.column_stack([(5040.0 / np.asarray(teff) - 0.9) / 0.2,
                            (np.asarray(logg) - 3.0) / 1.5,
                            (np.asarray(feh) + 0.5) / 0.8])


def design_matrix(x: np.ndarray, order: int = 3) -> np.ndarray:
    """(n, n_terms) polynomial terms of the scaled labels x (n, 3), constant first."""
    cols = [np.ones(len(x))]
    for deg in range(1, order + 1):
        for combo in combinations_with_replacement(range(x.shape[1]), deg):
            cols.append(np.prod(x[:, combo], axis=1))
    return np.column_stack(cols)


def in_domain(teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """(n,) bool: labels (n,) (K, dex, dex) inside the emulator's domain (DOMAIN)."""
    return ((teff >= DOMAIN["teff"][0]) & (teff <= DOMAIN["teff"][1])
            & (logg >= DOMAIN["logg"][0]) & (logg <= DOMAIN["logg"][1])
            & (feh >= DOMAIN["feh"][0]) & (feh <= DOMAIN["feh"][1]))


@dataclass
class MilesEmulator:
    """wave: (npix,) vacuum Angstrom; coeffs: (n_terms, npix) for log normalised flux;
    scatter: (npix,) rms of the training residuals; fwhm: resolution (Angstrom)."""

    wave: np.ndarray
    coeffs: np.ndarray
    scatter: np.ndarray
    fwhm: float
    order: int = 3

    @classmethod
    def fit(cls, lib: MilesLibrary, use: np.ndarray | None = None, order: int = 3,
            ridge: float = 1e-3) -> MilesEmulator:
        """Fit to the library stars selected by ``use`` (default: complete and in the domain)."""
        ok = lib.complete & in_domain(lib.teff, lib.logg, lib.feh)
        use = ok if use is None else (use & ok)
        y = log_normalised(lib.wave_vac, lib.flux[use])
        a = design_matrix(scaled_labels(lib.teff[use], lib.logg[use], lib.feh[use]), order)
        reg = ridge * len(a) * np.eye(a.shape[1])
        reg[0, 0] = 0.0
        coeffs = np.linalg.solve(a.T @ a + reg, a.T @ y)
        resid = y - a @ coeffs
        return cls(lib.wave_vac.copy(), coeffs, resid.std(axis=0), lib.fwhm, order)

    def log_flux(self, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """(n, npix) log of normalised flux for label arrays of shape (n,)."""
        return design_matrix(scaled_labels(teff, logg, feh), self.order) @ self.coeffs

    def flux(self, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """(n, npix) normalised flux (median 1 over 5000-5600 A)."""
        return np.exp(self.log_flux(teff, logg, feh))

    def save(self, path: str | Path) -> None:
        """Write the emulator as .npz to ``path``."""
        np.savez(path, wave=self.wave, coeffs=self.coeffs, scatter=self.scatter,
                 fwhm=self.fwhm, order=self.order)

    @classmethod
    def load(cls, path: str | Path) -> MilesEmulator:
        """Read an emulator written by :meth:`save`."""
        d = np.load(path)
        return cls(d["wave"], d["coeffs"], d["scatter"], float(d["fwhm"]), int(d["order"]))


def log_normalised(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """log(flux / median flux over NORM_RANGE) for flux (n, npix); non-positive -> tiny."""
    sel = (wave >= NORM_RANGE[0]) & (wave <= NORM_RANGE[1])
    norm = np.median(flux[:, sel], axis=1, keepdims=True)
    return np.log(np.clip(flux / norm, 1e-4, None))


def holdout_residuals(lib: MilesLibrary, seed: int = 1, frac: float = 0.1,
                      ) -> dict[str, np.ndarray]:
    """Fit on (1 - frac) of the usable stars, predict the rest.

    Returns the held-out stars' labels and their per-star rms residual in log flux over the
    whole MILES range (``rms``) and over the common grid 4000-5600 A (``rms_grid``)."""
    ok = lib.complete & in_domain(lib.teff, lib.logg, lib.feh)
    idx = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    test = rng.choice(idx, size=max(1, int(round(frac * idx.size))), replace=False)
    train = np.zeros(lib.teff.size, bool)
    train[idx] = True
    train[test] = False
    emu = MilesEmulator.fit(lib, train)
    y = log_normalised(lib.wave_vac, lib.flux[test])
    pred = emu.log_flux(lib.teff[test], lib.logg[test], lib.feh[test])
    grid = (lib.wave_vac >= 4000) & (lib.wave_vac <= 5600)
    return {"teff": lib.teff[test], "logg": lib.logg[test], "feh": lib.feh[test],
            "ids": lib.ids[test], "rms": np.sqrt(np.mean((y - pred) ** 2, axis=1)),
            "rms_grid": np.sqrt(np.mean((y - pred)[:, grid] ** 2, axis=1)),
            "n_train": np.array(train.sum())}


def crossval_residuals(lib: MilesLibrary, n_folds: int = 10, seed: int = 1,
                       ) -> dict[str, np.ndarray]:
    """Cross-validated emulator residuals of every usable MILES star (complete labels, in the
    domain): the stars are split into ``n_folds`` folds and each fold is predicted by an
    emulator fitted to the others.

    Returns ``wave`` (npix,) vacuum Angstrom, ``resid`` (n, npix) log normalised flux minus
    its prediction, and the stars' ``teff`` (K), ``logg``, ``feh`` (dex) and MILES ``ids``,
    each (n,)."""
    ok = lib.complete & in_domain(lib.teff, lib.logg, lib.feh)
    idx = np.random.default_rng(seed).permutation(np.flatnonzero(ok))
    resid = np.empty((idx.size, lib.wave_vac.size))
    for fold in np.array_split(np.arange(idx.size), n_folds):
        train = np.zeros(lib.teff.size, bool)
        train[idx] = True
        train[idx[fold]] = False
        emu = MilesEmulator.fit(lib, train)
        s = idx[fold]
        resid[fold] = (log_normalised(lib.wave_vac, lib.flux[s])
                       - emu.log_flux(lib.teff[s], lib.logg[s], lib.feh[s]))
    return {"wave": lib.wave_vac.copy(), "resid": resid, "teff": lib.teff[idx],
            "logg": lib.logg[idx], "feh": lib.feh[idx], "ids": lib.ids[idx]}
