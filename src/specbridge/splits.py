"""Deterministic train/validation/test splits by a hash of the survey ID: adding data never
moves a star from one split to another."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def split_fraction(specid: np.ndarray, salt: int = 0) -> np.ndarray:
    """(n,) float in [0, 1), a fixed pseudo-random function of each int64 ID (splitmix64)."""
    x = np.asarray(specid).astype(np.uint64) + np.uint64(salt) * _GOLDEN
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def is_validation(specid: np.ndarray, val_fraction: float) -> np.ndarray:
    """True for the IDs in the validation split of pretraining (a ``val_fraction`` share)."""
    return split_fraction(specid) < val_fraction


TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_CODES = {"train": TRAIN, "val": VALIDATION, "test": TEST}


def assign_split(specid: np.ndarray, val_fraction: float, test_fraction: float = 0.0
                 ) -> np.ndarray:
    """(n,) int8 split code per ID: VALIDATION for a ``val_fraction`` share, TEST for the next
    ``test_fraction`` share, TRAIN for the rest (the validation split equals is_validation's)."""
    u = split_fraction(specid)
    code = np.full(u.shape, TRAIN, dtype=np.int8)
    code[u < val_fraction + test_fraction] = TEST
    code[u < val_fraction] = VALIDATION
    return code
