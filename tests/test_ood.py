"""Out-of-domain flags and the embedding-quality probes: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from specbridge import flags
from specbridge.inference.ood import (
    disagreeing,
    label_support,
    label_threshold,
    ood_flags,
    outside_support,
    score_threshold,
)
from specbridge.models.embedding_quality import linear_probe, ridge_fit, ridge_predict


def test_score_threshold_interpolates_the_stored_quantiles():
    scores = np.random.default_rng(0).normal(size=100_000)
    q = np.quantile(scores, np.linspace(0, 1, 1001))
    assert abs(score_threshold(q, 99.0) - 2.326) < 0.03
    assert abs(score_threshold(q, 50.0)) < 0.02
    assert score_threshold(q, 100.0) == q[-1]


def test_label_support_and_outside():
    train = np.array([[4000.0, 1.0], [6000.0, 4.5], [5000.0, np.nan]])
    sup = label_support(train)  # too few stars for the joint check: the range only
    assert sup == {"lo": [4000.0, 1.0], "hi": [6000.0, 4.5]}
    pred = np.array([[5000, 2.0], [3500, 2.0], [5000, 4.6], [np.nan, 3.0]])
    assert outside_support(pred, sup).tolist() == [False, True, True, False]
    assert not outside_support(pred, None).any()


def _kiel_diagram(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) Teff (K), log g, [Fe/H] of a toy population: a giant branch from (5000 K, 3.5)
    to (4000 K, 1.0) and a main sequence from (6500 K, 4.1) to (4000 K, 4.7); no star
    between them at 4,000-4,500 K and log g 2.5-4.2."""
    giant = rng.random(n) < 0.5
    t = rng.random(n)
    teff = np.where(giant, 5000 - 1000 * t, 6500 - 2500 * t) + rng.normal(0, 40, n)
    logg = np.where(giant, 3.5 - 2.5 * t, 4.1 + 0.6 * t) + rng.normal(0, 0.08, n)
    return np.column_stack([teff, logg, rng.normal(-0.3, 0.3, n)])


def test_the_joint_label_check_flags_the_gap_of_the_kiel_diagram():
    rng = np.random.default_rng(3)
    sup = label_support(_kiel_diagram(4000, rng), joint=(0, 1), k=10)
    assert sup["joint"] == [0, 1] and len(sup["points"]) == 4000
    assert label_threshold(sup, 99.0) > label_threshold(sup, 90.0) > 0
    # about 1 % of new stars from the same population are beyond the threshold
    fresh = outside_support(_kiel_diagram(20000, rng), sup, 99.0).mean()
    assert 0.003 < fresh < 0.03
    assert outside_support(_kiel_diagram(20000, rng), sup, 90.0).mean() > 5 * fresh
    # inside every label's range, but where no star lies: cool "subgiants" at
    # 4,000-4,400 K and log g 3.0-3.6 (the M-dwarf failure) are all flagged
    gap = np.column_stack([rng.uniform(4000, 4400, 200), rng.uniform(3.0, 3.6, 200),
                           np.full(200, -0.3)])
    assert not ((gap < sup["lo"]) | (gap > sup["hi"])).any()
    assert outside_support(gap, sup).all()
    # [Fe/H] is not part of the joint check; a row without log g is not judged by it
    assert not outside_support(np.array([[4200.0, 1.5, -1.0], [4200.0, np.nan, 0.0]]),
                               sup).any()


def test_inference_judges_served_labels_by_the_joint_check():
    """predict_shard's support: the widest range over the candidates and the joint check of
    their pretrained model (a regression: it once kept the range only)."""
    from types import SimpleNamespace

    from specbridge.inference.predict import _support

    rng = np.random.default_rng(4)
    labels = _kiel_diagram(3000, rng)
    sup = label_support(labels, joint=(0, 1), k=10)
    wider = {"lo": [3000.0, 0.0, -3.0], "hi": [8000.0, 5.5, 1.0]}
    merged = _support([SimpleNamespace(support=wider), SimpleNamespace(support=sup),
                       SimpleNamespace(support=None)])
    assert merged["lo"] == wider["lo"] and merged["distance_quantiles"]
    gap = np.array([[4200.0, 3.3, -0.3], [4200.0, 1.5, -0.3]])
    bits = ood_flags(None, None, gap, np.full(gap.shape, 0.1), merged, [], 5.0,
                     percentile=99.0)
    assert [flags.names(int(b)) for b in bits] == [["OOD_LABELS"], []]


def test_disagreement_needs_most_candidates_beyond_their_combined_errors():
    value = np.array([[0.0], [0.0], [0.0]])
    error = np.full((3, 1), 0.1)
    # z against the served value: row 0 all agree, row 1 two of three disagree, row 2 one
    others = [(np.array([[0.1], [1.0], [1.0]]), np.full((3, 1), 0.1)),
              (np.array([[0.0], [1.0], [0.0]]), np.full((3, 1), 0.1)),
              (np.array([[0.2], [0.0], [0.0]]), np.full((3, 1), 0.1))]
    assert disagreeing(value, error, others, 5.0).tolist() == [False, True, False]
    assert not disagreeing(value, error, [], 5.0).any()


def test_ood_flags_set_the_documented_bits():
    value = np.array([[5000.0], [3000.0], [5000.0]])
    error = np.full((3, 1), 50.0)
    score = np.array([0.01, 0.01, 0.5])
    bits = ood_flags(score, 0.1, value, error, {"lo": [3800.0], "hi": [7000.0]}, [], 5.0)
    assert [flags.names(int(b)) for b in bits] == [[], ["OOD_LABELS"], ["OOD_SPECTRUM"]]
    assert not any(flags.BY_NAME[n].fatal for n in ("OOD_LABELS", "OOD_SPECTRUM"))
    # no threshold (no SpecFormer): no spectrum-space flag
    assert not (ood_flags(score, None, value, error, None, [], 5.0)
                & flags.flag("OOD_SPECTRUM")).any()


def test_ridge_probe_recovers_a_linear_label():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 10)) * rng.uniform(0.1, 10, 10)
    w = rng.normal(size=10)
    y = x @ w + 3.0 + rng.normal(0, 0.05, 2000)
    model = ridge_fit(x[:1500], y[:1500], alpha=1e-6)
    np.testing.assert_allclose(ridge_predict(model, x[1500:]), y[1500:], atol=0.3)
    sig = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], alpha=1e-6)
    assert 0.03 < sig < 0.08  # the noise level
    # a label unrelated to the features: the probe's scatter is the label's own
    z = rng.normal(0, 2.0, 2000)
    assert 1.6 < linear_probe(x[:1500], z[:1500], x[1500:], z[1500:]) < 2.4


def test_the_served_candidate_does_not_vote_on_its_own_value():
    """With two fine-tuned candidates, the one serving a label is left out of the vote, so
    the other's disagreement alone flags the row."""
    from types import SimpleNamespace

    from specbridge.inference.predict import _others

    cands = [SimpleNamespace(name="a_lora", strategy="lora"),
             SimpleNamespace(name="b_full", strategy="full"),
             SimpleNamespace(name="a_zeroshot", strategy="zeroshot")]
    names = [c.name for c in cands]
    preds = {"a_lora": (np.array([[0.0], [0.0]]), np.full((2, 1), 0.1)),
             "b_full": (np.array([[0.05], [2.0]]), np.full((2, 1), 0.1)),
             "a_zeroshot": (np.array([[9.0], [9.0]]), np.full((2, 1), 0.1))}
    served = np.zeros((2, 1), np.int16)  # a_lora serves
    others = _others(preds, names, served, cands)
    assert len(others) == 2 and np.isnan(others[0][0]).all()
    value, error = preds["a_lora"]
    assert disagreeing(value, error, others, 5.0).tolist() == [False, True]


def test_the_desi_domain_threshold_is_a_percentile_of_the_validation_scores():
    from specbridge.stages.evaluate import ood_domain_threshold

    rng = np.random.default_rng(3)
    n = 4000
    split = rng.choice([1, 2], n)
    score = rng.uniform(0, 1, n)
    got = ood_domain_threshold({"split": split, "ood_score": score}, 99.0)
    assert abs(got["ood_threshold"] - 0.99) < 0.01
    assert got["ood_threshold_n"] == int((split == 1).sum())
    # the training split's stars calibrate too (split 0), unless the SpecFormer saw them
    split3 = rng.choice([0, 1, 2], n)
    got3 = ood_domain_threshold({"split": split3, "ood_score": score}, 99.0)
    assert got3["ood_threshold_n"] == int((split3 != 2).sum())
    assert got3["ood_calibration_splits"] == "train+val"
    # the training split's stars far above: they count only when allowed to
    high = np.where(split3 == 0, score + 1.0, score)
    assert ood_domain_threshold({"split": split3, "ood_score": high}, 99.0)["ood_threshold"] > 1
    only_val = ood_domain_threshold({"split": split3, "ood_score": high}, 99.0, False)
    assert only_val["ood_threshold_n"] == int((split3 == 1).sum())
    assert abs(only_val["ood_threshold"] - 0.99) < 0.02
    assert abs(got["ood_test_flagged"] - 0.01) < 0.006
    # a shifted survey: every test star far above the validation stars is flagged
    shifted = np.where(split == 2, score + 1.0, score)
    assert ood_domain_threshold({"split": split, "ood_score": shifted}, 99.0
                                )["ood_test_flagged"] == 1.0
    # too few finite validation scores, or none at all: no threshold
    few = np.where(split == 1, np.nan, score)
    few[np.flatnonzero(split == 1)[:19]] = 0.5
    assert ood_domain_threshold({"split": split, "ood_score": few}, 99.0) is None
    assert ood_domain_threshold({"split": split}, 99.0) is None


def test_inference_takes_the_desi_threshold_at_the_configured_percentile_only():
    from specbridge.stages.infer import _ood_settings

    ood = {"percentile": 99.0, "z_max": 5.0}
    meta = {"ood_threshold": 0.42, "ood_percentile": 99.0}
    got = _ood_settings(ood, "embeddings/index.h5", meta)
    assert got["threshold"] == 0.42 and got["source"] == "DESI val"
    meta["ood_calibration_splits"] = "train+val"
    assert _ood_settings(ood, "embeddings/index.h5", meta)["source"] == "DESI train+val"
    # another percentile configured than the one evaluated, or no calibration meta: LAMOST's
    # quantiles (none readable here, so no threshold), never a threshold of another percentile
    for m in ({"ood_threshold": 0.42, "ood_percentile": 95.0}, {}):
        got = _ood_settings(ood, None, m)
        assert got["threshold"] is None and got["source"] == "held-out LAMOST"


def test_embedding_distance_known_answers():
    """Gaussian embeddings: the distance of training-like rows averages 1 (chi-square with
    k degrees of freedom over k); a row 6 sigma out along the first principal axis is at
    36 / k; ood_flags sets OOD_SPECTRUM from the distance alone."""
    from specbridge.inference.ood import density_distance, fit_density

    rng = np.random.default_rng(11)
    d, k = 40, 8
    scales = np.r_[np.linspace(5, 2, k), np.full(d - k, 0.1)]
    train = rng.normal(size=(20_000, d)) * scales
    dens = fit_density(train, k)
    assert dens["components"].shape == (k, d)
    np.testing.assert_allclose(dens["variances"], scales[:k] ** 2, rtol=0.05)
    test = rng.normal(size=(20_000, d)) * scales
    dist = density_distance(test, dens)
    assert abs(dist.mean() - 1) < 0.02
    assert abs(np.percentile(dist, 99) - 20.09 / k) < 0.1  # chi2_8 99th percentile 20.09
    far = np.zeros((1, d))
    far[0, 0] = 6 * scales[0]
    assert density_distance(far, dens)[0] == pytest.approx(36 / k, rel=0.05)
    # a NaN row, or no density: NaN
    assert np.isnan(density_distance(np.full((1, d), np.nan), dens)).all()
    assert np.isnan(density_distance(test[:3], None)).all()
    value, error = np.full((2, 1), 5000.0), np.full((2, 1), 100.0)
    bits = ood_flags(None, None, value, error, None, [], 5.0, np.array([1.0, 5.0]), 3.0)
    assert list((bits & flags.flag("OOD_SPECTRUM")) != 0) == [False, True]
    assert not (bits & flags.flag("OOD_LABELS")).any()


def test_the_desi_domain_distance_threshold():
    from specbridge.stages.evaluate import ood_domain_threshold

    rng = np.random.default_rng(4)
    n = 4000
    split = rng.choice([1, 2], n)
    score = rng.uniform(0, 1, n)
    dist = rng.uniform(0, 10, n)
    got = ood_domain_threshold({"split": split, "ood_score": score, "ood_distance": dist}, 99.0)
    # two independent checks: each at ~99.5 % so that either flags 1 % of validation stars
    # (known answer: 1 - q^2 = 0.01, q = 99.499 %), and about 1 % of the test stars
    assert abs(got["ood_joint_percentile"] - 99.5) <= 0.1
    assert abs(got["ood_distance_threshold"] - 9.95) < 0.05
    assert got["ood_calibration_flagged"] <= 0.01
    assert 0.004 < got["ood_test_flagged"] < 0.016
    # the same check twice: the union is one check, the percentile unchanged
    same = ood_domain_threshold({"split": split, "ood_score": score,
                                 "ood_distance": 10 * score}, 99.0)
    assert same["ood_joint_percentile"] <= 99.1 and abs(same["ood_test_flagged"] - 0.01) < 0.006
    # few validation stars: one star is already more than 1 %, so only q = 100 (nothing above
    # either) satisfies it; at 99.9 on many stars the grid ends at 100 as well
    few = np.r_[np.ones(30), np.full(30, 2)].astype(int)
    u = rng.uniform(0, 1, 60)
    got = ood_domain_threshold({"split": few, "ood_score": u, "ood_distance": u[::-1]}, 99.0)
    assert got["ood_joint_percentile"] == 100.0 and got["ood_calibration_flagged"] == 0.0
    got = ood_domain_threshold({"split": split, "ood_score": score, "ood_distance": dist}, 99.9)
    assert 99.9 <= got["ood_joint_percentile"] <= 100.0
