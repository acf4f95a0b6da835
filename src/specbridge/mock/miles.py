"""The MILES v9.1 stellar library: spectra on their native grid and the stars' parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fitsio
import numpy as np

MISSING = (9999.0, 99999.0)


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths (Angstrom) for air wavelengths (Angstrom), shape preserved.

    IAU standard (Morton 2000, with Ciddor's refractive index), evaluated at the air wavelength:
    lambda_vac = lambda_air * n(lambda_air); good to ~0.01 A over 3000-10000 A.
    """
    s2 = (1e4 / np.asarray(wave_air, dtype=np.float64)) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) \
        + 1.599740894897e-4 / (38.92568793293 - s2)
    return wave_air * n


@dataclass
class MilesLibrary:
    """n stars. wave_air, wave_vac: (npix,) Angstrom; flux: (n, npix) flux-calibrated
    (relative units); teff (K), logg (dex), feh (dex): (n,), NaN where MILES has none;
    ids: (n,) MILES numbers; fwhm: the library's resolution, Angstrom (2.5)."""

    wave_air: np.ndarray
    wave_vac: np.ndarray
    flux: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    ids: np.ndarray
    fwhm: float

    @property
    def complete(self) -> np.ndarray:
        """Stars with all three parameters."""
        return np.isfinite(self.teff) & np.isfinite(self.logg) & np.isfinite(self.feh)


def read_params(path: Path) -> dict[int, tuple[float, float, float]]:
    """MILES number -> (Teff K, log g dex, [Fe/H] dex) from MILES_params.db (whitespace table:
    number, Teff, log g, [Fe/H]; 9999 / 99999 mean missing -> NaN)."""
    table = np.loadtxt(path, comments="#", ndmin=2)
    out = {}
    for num, teff, logg, feh in table:
        vals = tuple(np.nan if v in MISSING else float(v) for v in (teff, logg, feh))
        out[int(num)] = vals
    return out


def load_miles(folder: str | Path) -> MilesLibrary:
    """Read every ``MILES_res2.50_star_m????V.fits`` in ``folder`` with its parameters."""
    folder = Path(folder)
    params = read_params(folder / "MILES_params.db")
    files = sorted(folder.glob("MILES_res2.50_star_m*V.fits"))
    if not files:
        raise FileNotFoundError(f"no MILES spectra in {folder}")
    h = fitsio.read_header(str(files[0]))
    npix = int(h["NAXIS1"])
    wave_air = h["CRVAL1"] + h["CDELT1"] * (np.arange(npix) + 1 - h["CRPIX1"])
    flux = np.empty((len(files), npix), dtype=np.float64)
    ids = np.empty(len(files), dtype=np.int64)
    labels = np.full((len(files), 3), np.nan)
    for i, f in enumerate(files):
        flux[i] = fitsio.read(str(f))
        ids[i] = int(f.name.split("_m")[1][:4])
        labels[i] = params.get(int(ids[i]), (np.nan, np.nan, np.nan))
    return MilesLibrary(wave_air, air_to_vacuum(wave_air), flux, labels[:, 0], labels[:, 1],
                        labels[:, 2], ids, float(h.get("FWHM", 2.5)))
