"""Bootstrap intervals over stars (specbridge.evaluation.bootstrap) and the vectorised robust
sigma they use, on synthetic residuals with fixed seeds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from specbridge.evaluation.bootstrap import (
    _replicates,
    bootstrap_interval,
    paired_difference,
    resample_indices,
    verdict,
)
from specbridge.evaluation.metrics import median_rows, robust_sigma, robust_sigma_axis


def _lanes(rng, width):
    """Lanes to check the vectorised statistics on: Gaussian, heavy tails, ties, huge outliers,
    NaN/inf holes of every amount (also all missing), fewer than 3 values."""
    x = rng.normal(0, 2, (120, width))
    x[::5] = rng.standard_t(2, (len(x[::5]), width))
    x[1, : max(0, width - 3)] = 1.0          # more than half equal: 0
    x[2, width // 3:] = np.nan
    x[3, ::4] = np.nan
    x[4, :] = np.nan
    x[6, :-1] = np.nan
    x[7, :-2] = np.inf
    x[8, 0] = 1e170                          # its square overflows; it gets no weight
    for r in range(20, 120, 3):
        x[r, rng.integers(0, width, rng.integers(0, width))] = np.nan
    return x


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7, 200, 201])
def test_robust_sigma_axis_agrees_with_robust_sigma(width):
    rng = np.random.default_rng(width)
    x = _lanes(rng, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.array([robust_sigma(lane) for lane in x])
        ref_med = np.array([np.median(lane[np.isfinite(lane)]) if np.isfinite(lane).any()
                            else np.nan for lane in x])
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # the vectorised forms warn about nothing
        got = robust_sigma_axis(x)
        got_t = robust_sigma_axis(x.T, axis=0)
        med = median_rows(x)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)  # NaN where ref is NaN
    np.testing.assert_array_equal(got_t, got)
    np.testing.assert_array_equal(med, ref_med)  # exactly np.median's values


def test_robust_sigma_axis_shapes_and_small_chunks():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 50, 6))
    want = np.array([[robust_sigma(y[i, :, j]) for j in range(6)] for i in range(4)])
    np.testing.assert_allclose(robust_sigma_axis(y, axis=1), want, rtol=1e-12)
    np.testing.assert_allclose(robust_sigma_axis(y, axis=1, chunk=7), want, rtol=1e-12)
    assert robust_sigma_axis(np.zeros((3, 0))).shape == (3,)


def test_interval_of_robust_sigma_covers_the_truth_68_percent_of_the_time():
    rng = np.random.default_rng(1000)
    sigma, hits = 2.0, 0
    for i in range(200):
        est, lo, hi = bootstrap_interval("robust_sigma", rng.normal(0, sigma, 300),
                                         n_boot=300, level=0.68, seed=i)
        assert lo <= est <= hi
        hits += lo <= sigma <= hi
    assert 61 <= hits / 2 <= 75, hits / 2


def test_interval_width_scales_as_one_over_sqrt_n():
    rng = np.random.default_rng(7)

    def width(n):
        return np.mean([np.subtract(*bootstrap_interval("robust_sigma", rng.normal(0, 1, n),
                                                        n_boot=300, seed=s)[2:0:-1])
                        for s in range(6)])

    ratio = width(400) / width(3600)
    assert 2.5 < ratio < 3.5, ratio  # sqrt(3600 / 400) = 3
    x = rng.normal(0, 1, 1000)
    w68 = np.subtract(*bootstrap_interval("bias", x, level=0.68)[2:0:-1])
    w95 = np.subtract(*bootstrap_interval("bias", x, level=0.95)[2:0:-1])
    assert 1.7 < w95 / w68 < 2.3  # 1.96 / 0.99 for a Gaussian


def test_estimate_is_the_reported_statistic_and_seeded():
    x = np.random.default_rng(3).normal(0.1, 1.5, 500)
    x[::50] = np.nan                          # left out, like the metrics do
    r = bootstrap_interval("robust_sigma", x, n_boot=200, seed=5)
    assert r.estimate == robust_sigma(x)
    assert r == bootstrap_interval(robust_sigma, x, n_boot=200, seed=5)
    assert r != bootstrap_interval("robust_sigma", x, n_boot=200, seed=6)
    b = bootstrap_interval("bias", x, n_boot=200)
    assert b.estimate == np.median(x[np.isfinite(x)]) and b.lo < 0.1 < b.hi


def test_vectorised_replicates_equal_the_statistic_on_each_resample():
    rng = np.random.default_rng(11)
    y = rng.normal(0, 1, 150)
    groups = rng.integers(0, 40, 150)         # stars with 1..9 visits: ragged replicates
    idx = resample_indices(150, groups, 60, seed=2)
    for name, fn in (("robust_sigma", robust_sigma), ("median", np.median),
                     ("mean", np.mean)):
        np.testing.assert_allclose(_replicates(name, name, [y], idx),
                                   _replicates(None, fn, [y], idx), rtol=1e-12, atol=1e-15)


def test_a_generic_statistic_of_several_arrays():
    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, 400)
    pred = ref + rng.normal(0.3, 0.5, 400)
    est, lo, hi = bootstrap_interval(lambda p, r: float(np.median(p - r)), pred, ref,
                                     n_boot=200)
    assert lo < 0.3 < hi and lo < est < hi
    with pytest.raises(ValueError):
        bootstrap_interval("robust_sigma", pred, ref)


def test_resampling_draws_whole_stars():
    rng = np.random.default_rng(5)
    groups = np.array([f"star{i}" for i in rng.integers(0, 30, 100)])
    codes = np.unique(groups, return_inverse=True)[1]
    sizes = np.bincount(codes)
    idx = resample_indices(100, groups, 200, seed=1)
    for row in idx:
        k = int((row >= 0).sum())
        assert (row[:k] >= 0).all() and (row[k:] < 0).all()
        star, count = np.unique(codes[row[:k]], return_counts=True)
        assert (count % sizes[star] == 0).all()                # every visit of a star
        assert (count // sizes[star]).sum() == sizes.size      # as many stars as there are
    np.testing.assert_array_equal(idx, resample_indices(100, groups, 200, seed=1))
    assert resample_indices(10, None, 5).shape == (5, 10)


def test_repeat_visits_do_not_shrink_the_interval_when_grouped():
    x = np.random.default_rng(8).normal(0, 1, 1000)
    ids = np.arange(1000)
    twice, twice_ids = np.concatenate([x, x]), np.concatenate([ids, ids])
    for stat in ("robust_sigma", "bias"):
        _, lo, hi = bootstrap_interval(stat, x, groups=ids, n_boot=400)
        _, glo, ghi = bootstrap_interval(stat, twice, groups=twice_ids, n_boot=400)
        _, ulo, uhi = bootstrap_interval(stat, twice, n_boot=400)
        assert 0.85 < (ghi - glo) / (hi - lo) < 1.15, stat
        assert (uhi - ulo) / (hi - lo) < 0.8, stat  # rows taken for stars: 1/sqrt(2)


def test_paired_difference_verdicts():
    rng = np.random.default_rng(9)
    a = rng.normal(0, 1, 2000)
    tiny = a.copy()
    tiny[::100] += rng.normal(0, 0.3, 20)       # 1 % of the stars moved a little
    r = paired_difference("robust_sigma", a, tiny, n_boot=400)
    assert r.verdict == "not significant" and r.lo < 0 < r.hi
    # 3 % noise added: robust sigma grows by ~5e-4, well inside the 95 % interval (a 68 %
    # interval excludes 0 for about a third of truly equal candidates)
    r = paired_difference("robust_sigma", a, a + rng.normal(0, 0.03, 2000), n_boot=400,
                          level=0.95)
    assert r.verdict == "not significant" and r.lo < 0 < r.hi
    wide = a * 1.2 + rng.normal(0, 0.05, 2000)  # 20 % larger sigma
    r = paired_difference("robust_sigma", a, wide, n_boot=400)
    assert r.verdict == "yes" and r.hi < 0 and r.lo < r.difference < r.hi
    assert abs(r.difference + 0.2 * robust_sigma(a)) < 0.02
    assert paired_difference("robust_sigma", wide, a, n_boot=400).verdict == "no"
    indep = rng.normal(0, 1.2, 2000)
    assert paired_difference("robust_sigma", a, indep, n_boot=400).verdict == "yes"
    # bias: closer to zero is better, whatever its sign
    c = a - np.median(a)
    r = paired_difference("bias", c + 0.01, c - 0.2, n_boot=400, better="closer_to_zero")
    assert r.verdict == "yes" and r.difference == pytest.approx(0.01 - 0.2, abs=0.02)


def test_paired_difference_uses_the_same_stars_and_rows():
    rng = np.random.default_rng(10)
    a, b = rng.normal(0, 1, 300), rng.normal(0, 1.1, 300)
    b[::10] = np.nan                          # only rows both candidates have
    ok = np.isfinite(b)
    r = paired_difference("robust_sigma", a, b, n_boot=100)
    assert r.difference == robust_sigma(a[ok]) - robust_sigma(b[ok])
    assert paired_difference("robust_sigma", a, a, n_boot=50)[1:3] == (0.0, 0.0)
    assert paired_difference("robust_sigma", [], [], n_boot=10).verdict == "not significant"
    with pytest.raises(ValueError):
        paired_difference("robust_sigma", a, b[:10])


def test_verdict_rules_and_degenerate_inputs():
    assert verdict(-0.3, -0.1) == "yes" and verdict(0.1, 0.3) == "no"
    assert verdict(-0.1, 0.1) == "not significant"
    assert verdict(0.1, 0.3, better="higher") == "yes"
    assert verdict(float("nan"), float("nan")) == "not significant"
    est, lo, hi = bootstrap_interval("robust_sigma", [1.0, np.nan], n_boot=20)
    assert np.isnan([est, lo, hi]).all()
    assert np.isnan(bootstrap_interval("bias", [], n_boot=20)).all()
    with pytest.raises(ValueError):
        bootstrap_interval("robust_sigma", [1.0, 2.0, 3.0], level=68)


def test_paired_ratio_known_answers():
    from specbridge.evaluation.bootstrap import paired_ratio

    rng = np.random.default_rng(3)
    b = rng.normal(0, 1, 4000)
    # a is b scaled by 1.5: the ratio is 1.5 on every resample, whatever the stars drawn
    r = paired_ratio("robust_sigma", 1.5 * b, b, n_boot=300, level=0.95)
    assert r.ratio == pytest.approx(1.5) and r.lo == pytest.approx(1.5)
    assert r.hi == pytest.approx(1.5) and r.verdict == "no"
    # independent residuals of equal spread: 1 inside the interval, about 2x2.2 % wide at 95 %
    c = rng.normal(0, 1, 4000)
    r = paired_ratio("robust_sigma", c, b, n_boot=500, level=0.95)
    assert r.lo < 1 < r.hi and r.verdict == "not significant"
    assert 0.03 < r.hi - r.lo < 0.15
    r = paired_ratio("robust_sigma", 0.8 * c, b, n_boot=500, level=0.95)
    assert r.hi < 1 and r.verdict == "yes"


def test_paired_ratio_without_spread_in_the_reference():
    from specbridge.evaluation.bootstrap import paired_ratio

    r = paired_ratio("robust_sigma", [1.0], [2.0])  # one star: no spread, no ratio
    assert np.isnan(r.ratio) and r.verdict == "not significant"
