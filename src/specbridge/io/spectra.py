"""Spectra of manifest rows read in groups, whatever the survey: the one switch between the
DESI and LAMOST readers that preprocessing uses."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from specbridge.io.fitsutil import FormatError

SpectraGroup = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                     np.ndarray | None]


def read_spectra_groups(survey: str, files: np.ndarray, file_idx: np.ndarray,
                        rows: np.ndarray, want_resolution: bool,
                        ) -> Iterator[SpectraGroup | tuple[np.ndarray, FormatError]]:
    """Read the spectra of ``rows`` (file ``files[file_idx]``, row in it), grouped so that a
    group shares one wavelength grid.

    Yields ``(idx, wave, flux, ivar, mask, sigma_aa)`` with ``idx`` (k,) positions into the
    given rows, ``wave`` (npix,) vacuum Angstrom, ``flux``/``ivar``/``mask`` (k, npix) and
    ``sigma_aa`` (npix,) the DESI line-spread sigma in Angstrom (from the RESOLUTION HDU, else
    nominal; None for LAMOST or when not wanted) — or ``(idx, FormatError)`` for the rows of a
    file that cannot be read. DESI: the B arm; LAMOST: one file per spectrum.
    """
    from specbridge.io import desi, lamost

    order = np.argsort(file_idx, kind="stable")
    bounds = np.flatnonzero(np.diff(file_idx[order])) + 1
    lam_groups: dict[tuple[int, float], list] = {}
    for grp in np.split(order, bounds):
        if grp.size == 0:
            continue
        path = files[file_idx[grp[0]]]
        try:
            if survey == "desi":
                parts = ("FLUX", "IVAR", "MASK") + (("RESOLUTION",) if want_resolution else ())
                arm = desi.read_arm(path, "B", rows=rows[grp], parts=parts)
                sigma = None
                if want_resolution:
                    from specbridge.kernels.pipeline import (
                        nominal_desi_sigma_aa,
                        resolution_sigma_aa,
                    )
                    sigma = (resolution_sigma_aa(arm.resolution, arm.wave)
                             if arm.resolution is not None else nominal_desi_sigma_aa(arm.wave))
                yield grp, arm.wave, arm.flux, arm.ivar, arm.mask, sigma
            else:
                for i in grp:
                    s = lamost.read_lamost(path)
                    key = (s.wave.size, round(float(s.wave[0]), 3))
                    lam_groups.setdefault(key, []).append((i, s))
        except FormatError as err:
            yield grp, err
    for items in lam_groups.values():
        idx = np.array([i for i, _ in items])
        wave = items[0][1].wave
        yield (idx, wave, np.stack([s.flux for _, s in items]),
               np.stack([s.ivar for _, s in items]),
               np.stack([s.andmask for _, s in items]), None)
