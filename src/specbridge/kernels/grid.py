"""Wavelength grids and pixel edges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogGrid:
    """log10 lambda = start + step * i, i = 0..npix-1 (vacuum Angstrom)."""

    start: float = 3.602
    step: float = 1e-4
    npix: int = 1462

    @classmethod
    def from_config(cls, grid: dict[str, Any]) -> LogGrid:
        return cls(grid["log10_lambda_start"], grid["log10_lambda_step"], grid["npix"])

    @property
    def wave(self) -> np.ndarray:
        """(npix,) pixel centres, Angstrom."""
        return 10.0 ** (self.start + self.step * np.arange(self.npix))

    @property
    def edges(self) -> np.ndarray:
        """(npix + 1,) pixel edges, Angstrom (half a step in log either side of the centres)."""
        return 10.0 ** (self.start + self.step * (np.arange(self.npix + 1) - 0.5))


def pixel_edges(centres: np.ndarray) -> np.ndarray:
    """(n + 1,) edges of pixels with the given increasing centres (n,): midpoints between
    centres, and the first/last pixel mirrored about its centre."""
    c = np.asarray(centres, dtype=np.float64)
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
