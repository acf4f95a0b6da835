"""Star-to-star spectral residuals: what the emulator's three labels do not describe.

Real stars of the same Teff, log g and [Fe/H] differ: reddening, [alpha/Fe] and other abundance
patterns, rotation, activity, binarity, the library's flux calibration. The emulator smooths
all of that away, so without a residual two mock stars of equal labels would have identical
spectra. The residual model is learnt from the MILES stars themselves:

1. every usable MILES star (782) is predicted by an emulator fitted without it (10-fold
   cross-validation, :func:`specbridge.mock.emulator.crossval_residuals`); its residual is
   ln(flux / prediction) on the MILES grid (3541-7412 A);
2. a PCA (uncentred SVD) of those residuals gives components v_j (orthonormal, (npix,));
   each star's coefficients a_ij divided by its rms over 4000-5600 A, rms_i, give the typical
   amplitude s_j of component j for a star of unit rms;
3. ln rms_i is modelled as a quadratic in the emulator's scaled labels plus a Gaussian scatter
   (cool giants and metal-poor stars have larger residuals).

A mock star's residual is then r = exp(m) c_K sum_{j < K} s_j z_j v_j, with
m = model(labels) + scatter * eps, z_j and eps standard normal drawn from the star's own seed
(its identity, not the survey), and c_K the factor that makes the expected mean square over
4000-5600 A equal to exp(2 m) (the first K components carry ~90 % of the variance at K = 20;
the rest is spread over them). It multiplies the rest-frame flux by exp(r).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specbridge.mock.emulator import design_matrix, scaled_labels

RMS_RANGE = (4000.0, 5600.0)  # Angstrom, vacuum: the range a star's residual rms refers to
N_MAX = 40  # components kept in the cache (data.mock.star_residual_components <= N_MAX)
EPS_CLIP = 2.5  # the star's amplitude scatter is clipped at +-2.5 sigma


def _seed_key(key: int) -> int:
    """A non-negative integer for numpy's SeedSequence from an int64 star key."""
    return int(key) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class StarResiduals:
    """The residual model (module docstring).

    wave: (npix,) vacuum Angstrom (the MILES grid); components: (N_MAX, npix) orthonormal
    rows v_j; comp_scale: (N_MAX,) s_j; grid_power: (N_MAX,) mean of v_j^2 over RMS_RANGE;
    rms_coeffs: (10,) quadratic model of ln rms in the scaled labels
    (:func:`specbridge.mock.emulator.design_matrix`, order 2); rms_scatter: std of ln rms
    about it; rms_bounds: (2,) ln rms clipped to the range seen in MILES; train_rms: (nstar,)
    the MILES stars' rms over RMS_RANGE (for reference)."""

    wave: np.ndarray
    components: np.ndarray
    comp_scale: np.ndarray
    grid_power: np.ndarray
    rms_coeffs: np.ndarray
    rms_scatter: float
    rms_bounds: np.ndarray
    train_rms: np.ndarray

    @classmethod
    def fit(cls, cv: dict[str, np.ndarray], n_components: int = N_MAX) -> StarResiduals:
        """From cross-validated residuals ``cv`` (keys wave, resid (n, npix), teff, logg,
        feh (n,), as returned by ``crossval_residuals``)."""
        wave, resid = cv["wave"], cv["resid"]
        grid = (wave >= RMS_RANGE[0]) & (wave <= RMS_RANGE[1])
        rms = np.sqrt(np.mean(resid[:, grid] ** 2, axis=1))
        u, s, vt = np.linalg.svd(resid, full_matrices=False)
        k = min(n_components, s.size)
        amp = u[:, :k] * s[:k] / rms[:, None]
        comp_scale = np.sqrt(np.mean(amp ** 2, axis=0))
        comps = vt[:k]
        x = design_matrix(scaled_labels(cv["teff"], cv["logg"], cv["feh"]), order=2)
        coef, *_ = np.linalg.lstsq(x, np.log(rms), rcond=None)
        scatter = float(np.std(np.log(rms) - x @ coef))
        bounds = np.array([np.log(rms).min(), np.log(rms).max()])
        return cls(wave.copy(), comps, comp_scale, np.mean(comps[:, grid] ** 2, axis=1), coef,
                   scatter, bounds, rms)

    @property
    def n_max(self) -> int:
        return int(self.components.shape[0])

    def unit_norm(self, n_components: int) -> float:
        """c_K: scales the first K components so that a star's expected mean square over
        RMS_RANGE is its drawn rms squared."""
        k = min(n_components, self.n_max)
        return float(1.0 / np.sqrt(np.sum(self.comp_scale[:k] ** 2 * self.grid_power[:k])))

    def typical_rms(self, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
        """(n,) median residual rms over RMS_RANGE (fraction of flux) at the labels (n,)."""
        x = design_matrix(scaled_labels(teff, logg, feh), order=2)
        return np.exp(np.clip(x @ self.rms_coeffs, *self.rms_bounds))

    def draw(self, keys: np.ndarray, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray,
             seed: int, n_components: int) -> np.ndarray:
        """(n, K) residual coefficients of n stars, K = ``n_components``.

        keys: (n,) int64 star identities (the same star gets the same coefficients whatever
        survey observes it); teff (K), logg, feh (dex): (n,). Deterministic in (seed, key):
        each star draws N_MAX + 1 standard normals from its own generator, so K changes
        only how many of them are used."""
        k = min(n_components, self.n_max)
        keys = np.asarray(keys, dtype=np.int64)
        z = np.empty((keys.size, self.n_max + 1))
        for i, key in enumerate(keys):
            z[i] = np.random.default_rng([seed, 7, _seed_key(key)]).standard_normal(
                self.n_max + 1)
        x = design_matrix(scaled_labels(teff, logg, feh), order=2)
        ln_rms = np.clip(x @ self.rms_coeffs
                         + self.rms_scatter * np.clip(z[:, 0], -EPS_CLIP, EPS_CLIP),
                         *self.rms_bounds)
        return (np.exp(ln_rms)[:, None] * self.unit_norm(k) * self.comp_scale[None, :k]
                * z[:, 1: k + 1])

    def log_residual(self, coeffs: np.ndarray) -> np.ndarray:
        """(n, npix) ln-flux residual on ``wave`` for coefficients (n, K)."""
        coeffs = np.atleast_2d(coeffs)
        return coeffs @ self.components[: coeffs.shape[1]]

    def save(self, path: str | Path) -> None:
        """Write the model as .npz to ``path`` (an open binary file works too)."""
        np.savez(path, wave=self.wave, components=self.components, comp_scale=self.comp_scale,
                 grid_power=self.grid_power, rms_coeffs=self.rms_coeffs,
                 rms_scatter=self.rms_scatter, rms_bounds=self.rms_bounds,
                 train_rms=self.train_rms)

    @classmethod
    def load(cls, path: str | Path) -> StarResiduals:
        """Read a model written by :meth:`save`."""
        d = np.load(path)
        return cls(d["wave"], d["components"], d["comp_scale"], d["grid_power"],
                   d["rms_coeffs"], float(d["rms_scatter"]), d["rms_bounds"], d["train_rms"])
