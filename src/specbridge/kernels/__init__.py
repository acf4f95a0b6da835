"""Numba kernels for preprocessing, batched over spectra (rows), with NumPy references in
``specbridge.kernels.reference`` that only the tests use.

All kernels work on the common grid (docs/design.md): log10 lambda = 3.602 + 1e-4 i, i < 1462
(vacuum Angstrom), described by its pixel edges.
"""

from specbridge.kernels.broaden import broaden_gaussian
from specbridge.kernels.continuum import continuum_normalise
from specbridge.kernels.grid import LogGrid, pixel_edges
from specbridge.kernels.resample import resample_rest_frame

__all__ = ["LogGrid", "broaden_gaussian", "continuum_normalise", "pixel_edges",
           "resample_rest_frame"]
