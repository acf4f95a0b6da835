"""Splits by star identity: one key per star from the label catalogue's ID (else Gaia, else a
sky-position group), the same split for every visit and in both surveys, and DESI validation
and test stars held out of LAMOST pretraining."""

from __future__ import annotations

import numpy as np

from specbridge.io.shards import write_index, write_shard
from specbridge.splits import SPLIT_CODES, TRAIN, assign_split, star_keys
from specbridge.training.data import LabelledShards, holdout_stars

NPIX = 8


def _table():
    """A hand-made label-matched table of both surveys: (survey, label_id, gaia, ra, dec,
    specid) with a star seen by both surveys, repeat visits, Gaia-only and sky-only stars."""
    rows = [
        ("lamost", "2M00000001+0000001", -1, 10.0, 1.0, 101),   # star A, LAMOST visit 1
        ("lamost", "2M00000001+0000001", -1, 10.0, 1.0, 102),   # star A, LAMOST visit 2
        ("desi", "2M00000001+0000001", 77, 10.00001, 1.0, 9001),  # star A in DESI (Gaia too)
        ("lamost", "", 555, 20.0, -5.0, 103),                    # Gaia-only star B
        ("desi", "", 555, 20.00002, -5.0, 9002),                 # B in DESI
        ("lamost", "", -1, 30.0, 12.0, 104),                     # sky-only star C
        ("lamost", "", -1, 30.0 + 0.2 / 3600, 12.0, 105),        # C again, 0.2" away
        ("desi", "2M00000009+0000009", -1, 40.0, 3.0, 9003),     # DESI-only star D
    ]
    cols = list(zip(*rows, strict=True))
    return (np.array(cols[0]), np.array(cols[1]), np.array(cols[2], np.int64),
            np.array(cols[3]), np.array(cols[4]), np.array(cols[5], np.int64))


def test_one_key_per_star_across_visits_and_surveys():
    survey, label_id, gaia, ra, dec, specid = _table()
    key = star_keys(label_id, gaia, ra, dec, specid)
    assert key[0] == key[1] == key[2]          # catalogue ID wins over Gaia ID and position
    assert key[3] == key[4]                    # Gaia ID
    assert key[5] == key[6]                    # the same sky-position group
    assert len({key[0], key[3], key[5], key[7]}) == 4
    # a survey ID that equals a Gaia ID is another star: the kinds are salted apart
    only_specid = star_keys(np.array([""]), np.array([-1]), np.array([np.nan]),
                            np.array([np.nan]), np.array([555]))
    assert only_specid[0] != key[3]


def test_no_star_in_more_than_one_split_across_both_surveys():
    rng = np.random.default_rng(3)
    n = 4000
    stars = rng.integers(0, 1500, n)             # ~2.7 visits per star, spread over surveys
    label_id = np.array([f"2M{s:08d}" for s in stars])
    key = star_keys(label_id, np.full(n, -1), rng.uniform(0, 360, n), rng.uniform(-30, 60, n),
                    np.arange(n))
    split = assign_split(key, 0.25, 0.25)
    for s in np.unique(stars):
        assert len(set(split[stars == s])) == 1
    frac = np.bincount(split[np.unique(key, return_index=True)[1]], minlength=3) / len(
        np.unique(key))
    assert abs(frac[1] - 0.25) < 0.05 and abs(frac[2] - 0.25) < 0.05


def _write_survey(tmp_path, name, key, labels):
    n = key.size
    arrays = {"flux": np.ones((n, NPIX), np.float32), "ivar": np.ones((n, NPIX), np.float32),
              "mask": np.zeros((n, NPIX), np.uint8), "specid": np.arange(n, dtype=np.int64),
              "star": key, "manifest_row": np.arange(n, dtype=np.int64),
              "flags": np.zeros(n, np.int64), "snr": np.full(n, 50, np.float32),
              "z": np.zeros(n), "labels": labels.astype(np.float32),
              "label_errors": np.full((n, 4), 0.1, np.float32)}
    path = tmp_path / name / "shards" / "shard-000000.h5"
    write_shard(path, arrays, {"first_row": 0})
    write_index(tmp_path / name / "index.h5", [{"path": str(path), "first_row": 0, "n": n}], {})
    return tmp_path / name / "index.h5"


def test_desi_validation_and_test_stars_are_held_out_of_lamost_pretraining(tmp_path):
    rng = np.random.default_rng(5)
    shared = np.array([f"2M{s:08d}" for s in range(200)])   # stars observed by both surveys
    lam_ids = np.concatenate([shared, [f"L{s}" for s in range(300)]])
    desi_ids = np.concatenate([shared, [f"D{s}" for s in range(100)]])

    def keys(ids):
        n = ids.size
        return star_keys(ids, np.full(n, -1), rng.uniform(0, 360, n), np.zeros(n),
                         np.arange(n))

    lab = np.tile([5000.0, 4.0, -0.5, 0.1], (1, 1))
    lamost = _write_survey(tmp_path, "lamost", keys(lam_ids), np.repeat(lab, lam_ids.size, 0))
    desi = _write_survey(tmp_path, "desi", keys(desi_ids), np.repeat(lab, desi_ids.size, 0))
    held = holdout_stars(desi, 0.25, 0.25)
    desi_split = assign_split(keys(desi_ids), 0.25, 0.25)
    assert set(held) == set(keys(desi_ids)[desi_split != TRAIN])
    labels = ["teff", "logg", "feh", "alpha_fe"]
    sets = {sp: LabelledShards(str(lamost), labels, sp, 0.15, exclude_stars=held)
            for sp in ("train", "val")}
    shared_held = np.isin(keys(shared), held).sum()
    assert 0 < shared_held < 200
    assert sum(s.n_excluded for s in sets.values()) == shared_held
    assert sum(s.n for s in sets.values()) == lam_ids.size - shared_held
    without = sum(LabelledShards(str(lamost), labels, sp, 0.15).n for sp in ("train", "val"))
    assert without == lam_ids.size
    assert SPLIT_CODES["val"] == 1
