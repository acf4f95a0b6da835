"""specbridge: stellar parameters for survey spectra, learned on LAMOST and transferred to DESI."""

__version__ = "0.1.0"
