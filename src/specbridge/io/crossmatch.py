"""Attach reference labels to spectra: by file name, survey ID or Gaia ID where the label table
has them, else by sky position within a radius, with ambiguous matches counted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specbridge.io.labels import LabelTable


@dataclass
class Match:
    """Per spectrum: ``index`` into the label table (-1: none), ``sep_arcsec`` (NaN unless
    matched by position), ``n_candidates`` within the radius (or with the same key), ``method``
    ('file', 'spec_id', 'gaia', 'position' or '')."""

    index: np.ndarray
    sep_arcsec: np.ndarray
    n_candidates: np.ndarray
    method: np.ndarray


def _key_match(keys_spec: np.ndarray, keys_lab: np.ndarray, valid_spec: np.ndarray,
               index: np.ndarray, ncand: np.ndarray, method: np.ndarray, name: str) -> None:
    lookup: dict = {}
    for j, k in enumerate(keys_lab):
        lookup.setdefault(k, []).append(j)
    for i in np.flatnonzero(valid_spec & (index < 0)):
        hits = lookup.get(keys_spec[i])
        if hits:
            index[i] = hits[0]
            ncand[i] = len(hits)
            method[i] = name


def crossmatch(labels: LabelTable, ra: np.ndarray, dec: np.ndarray,
               gaia_id: np.ndarray | None = None, spec_id: np.ndarray | None = None,
               file: np.ndarray | None = None, radius_arcsec: float = 1.0) -> Match:
    """Match n spectra (ra, dec in deg, shape (n,)) to ``labels``.

    Order of preference: file name, survey ID, Gaia source ID (both > 0), then the nearest
    label within ``radius_arcsec``. ``n_candidates > 1`` marks an ambiguous match (the nearest,
    or first, is kept and the caller flags it).
    """
    n = ra.size
    index = np.full(n, -1, dtype=np.int64)
    sep = np.full(n, np.nan)
    ncand = np.zeros(n, dtype=np.int16)
    method = np.full(n, "", dtype="U8")
    if len(labels) == 0 or n == 0:
        return Match(index, sep, ncand, method)
    if file is not None and labels.file is not None:
        _key_match(np.asarray(file), labels.file, np.ones(n, bool), index, ncand, method, "file")
    if spec_id is not None and labels.spec_id is not None:
        _key_match(np.asarray(spec_id), labels.spec_id, np.asarray(spec_id) >= 0, index, ncand,
                   method, "spec_id")
    if gaia_id is not None:
        lab_ok = labels.gaia_id > 0
        if lab_ok.any():
            _key_match(np.asarray(gaia_id), labels.gaia_id[lab_ok], np.asarray(gaia_id) > 0,
                       index, ncand, method, "gaia")
            # indices found among the valid-Gaia subset map back to the full table
            sub = np.flatnonzero(lab_ok)
            m = method == "gaia"
            index[m] = sub[index[m]]
    todo = (index < 0) & np.isfinite(ra) & np.isfinite(dec)
    lab_pos = np.isfinite(labels.ra) & np.isfinite(labels.dec)
    if todo.any() and lab_pos.any():
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        spec_idx = np.flatnonzero(todo)
        lab_idx = np.flatnonzero(lab_pos)
        cs = SkyCoord(ra[spec_idx] * u.deg, dec[spec_idx] * u.deg)
        cl = SkyCoord(labels.ra[lab_idx] * u.deg, labels.dec[lab_idx] * u.deg)
        # every (spectrum, label) pair within the radius: cl.search_around_sky(cs, r) returns
        # the indices into its argument cs (spectra) first, then into cl (labels) itself
        i_s, i_l, d2d, _ = cl.search_around_sky(cs, radius_arcsec * u.arcsec)
        d = d2d.to_value(u.arcsec)
        counts = np.bincount(i_s, minlength=spec_idx.size)
        order = np.lexsort((d, i_s))
        first = np.ones(order.size, bool)
        first[1:] = i_s[order][1:] != i_s[order][:-1]
        best = order[first]
        s = spec_idx[i_s[best]]
        index[s] = lab_idx[i_l[best]]
        sep[s] = d[best]
        ncand[spec_idx] = np.maximum(ncand[spec_idx], counts.astype(np.int16))
        method[s] = "position"
    return Match(index, sep, ncand, method)
