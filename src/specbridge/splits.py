"""Deterministic train/validation/test splits by a hash of the star's identity: adding data
never moves a star from one split to another, repeat visits of a star share its split, and a
star observed by both surveys has one split in both (its key comes from the label catalogue's
star ID, which is the same in both manifests)."""

from __future__ import annotations

import hashlib

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


TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_CODES = {"train": TRAIN, "val": VALIDATION, "test": TEST}


def assign_split(key: np.ndarray, val_fraction: float, test_fraction: float = 0.0
                 ) -> np.ndarray:
    """(n,) int8 split code per star key (:func:`star_keys`): VALIDATION for a
    ``val_fraction`` share, TEST for the next ``test_fraction`` share, TRAIN for the rest."""
    u = split_fraction(key)
    code = np.full(u.shape, TRAIN, dtype=np.int8)
    code[u < val_fraction + test_fraction] = TEST
    code[u < val_fraction] = VALIDATION
    return code


#: HEALPix nside of the sky-position groups of stars with neither a catalogue nor a Gaia ID
#: (nested pixels of ~1.6 arcsec: repeat visits of one star fall in one pixel unless it sits on
#: a pixel edge)
STAR_GROUP_NSIDE = 2 ** 17
_KIND_SALT = {"label": 1, "gaia": 2, "sky": 3, "spec": 4}


def _text_keys(values: np.ndarray, kind: str) -> np.ndarray:
    """int64 keys of strings: the first 8 bytes of BLAKE2b("<kind>:<value>"), one hash per
    distinct value."""
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    keys = np.array([int.from_bytes(hashlib.blake2b(f"{kind}:{u}".encode(), digest_size=8)
                                    .digest(), "little", signed=True) for u in uniq], np.int64)
    return keys[inv.reshape(-1)] if uniq.size else np.zeros(0, np.int64)


def _int_keys(values: np.ndarray, kind: str) -> np.ndarray:
    """int64 keys of integers, mixed with the kind's salt (splitmix64)."""
    x = np.asarray(values).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(_KIND_SALT[kind]) * _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x.astype(np.int64)


def star_keys(label_id: np.ndarray, gaia_id: np.ndarray, ra: np.ndarray, dec: np.ndarray,
              specid: np.ndarray) -> np.ndarray:
    """(n,) int64 key of each spectrum's star: from the label catalogue's star ID (APOGEE_ID)
    where matched, else the Gaia source ID (>= 0), else a sky-position group (HEALPix nested
    pixel at :data:`STAR_GROUP_NSIDE` of RA, Dec in degrees), else the survey ID."""
    from specbridge.vac.healpix import ang2pix_nest

    label_id = np.asarray(label_id)
    # text work on the matched rows only (a few per cent of a survey; bytes or str)
    some = np.flatnonzero(label_id != label_id.dtype.type())
    text = np.char.strip(label_id[some].astype(str))
    gaia_id = np.asarray(gaia_id, np.int64)
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    key = _int_keys(np.asarray(specid, np.int64), "spec")
    sky = np.isfinite(ra) & np.isfinite(dec)
    if sky.any():
        key[sky] = _int_keys(ang2pix_nest(STAR_GROUP_NSIDE, ra[sky], dec[sky]), "sky")
    gaia = gaia_id >= 0
    key[gaia] = _int_keys(gaia_id[gaia], "gaia")
    labelled = some[text != ""]
    if labelled.size:
        key[labelled] = _text_keys(text[text != ""], "label")
    return key
