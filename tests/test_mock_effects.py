"""The mock's survey effects (issue #14): each one switched on alone changes what it should and
nothing else; a star observed by both surveys has one extinction and one companion, while
its survey things (redshift error, calibration, sky) differ."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from specbridge.mock import effects, physics
from specbridge.mock.effects import EFFECT_NAMES, SurveyEffects

N_STARS = 2000


@pytest.fixture(scope="module")
def base(small_mock):
    """(config with every effect off, its mock context); the emulator and residual model
    cached by the session's small mock."""
    from specbridge.config import validate_config
    from specbridge.mock.survey import build_context

    shared = small_mock["config"]
    cfg = validate_config({"reference_data": shared["reference_data"],
                           "resources_dir": shared["resources_dir"],
                           "data": {"mock": {"n_lamost": N_STARS, "n_desi": N_STARS,
                                             "n_lamost_unlabelled": 0, "n_overlap": 200}}})
    for name in EFFECT_NAMES:
        assert cfg["data"]["mock"][name]["enabled"]  # the schema's default: on
        cfg["data"]["mock"][name]["enabled"] = False
    return cfg, build_context(cfg)


def with_effects(base, *names):
    """(mock config, context) of ``base`` with the effects ``names`` switched on."""
    from specbridge.mock.survey import bright_sky

    cfg, ctx = base
    mock = copy.deepcopy(cfg["data"]["mock"])
    for name in names:
        mock[name]["enabled"] = True
    eff = SurveyEffects.from_mock(mock)
    sky = bright_sky(ctx.emulator, ctx.desi_wave, eff.bright_sky) if eff.on("bright_sky") \
        else None
    return mock, dataclasses.replace(ctx, effects=eff, desi_sky_continuum=sky)


def one_star(**kw):
    """A single K dwarf's star table (every array (1,)), fields overridden by ``kw``."""
    star = {"teff": 5200.0, "logg": 4.3, "feh": -0.2, "alpha_fe": 0.05, "rv": 0.0,
            "snr": 1e6, "mag_r": 4.0, "id": 900_000_001, "ra": 120.0, "dec": 30.0,
            "gaia_id": 4_000_000_000_000_001, "index": 0, "component": "thin"}
    star.update(kw)
    return {k: np.array([v]) for k, v in star.items()}


def test_each_effect_alone_changes_only_its_own_star_quantities(base):
    """The star tables of the mock with one effect on differ from those with none only in
    that effect's quantities (priors: the labels themselves)."""
    from specbridge.mock.survey import draw_survey

    cfg, ctx = base
    mock0, _ = with_effects(base)
    lam0, desi0 = draw_survey(ctx, mock0, cfg["seed"])
    own = {"extinction": {"ebv"}, "binaries": {"comp_flux", "comp_teff", "comp_logg",
                                                "comp_dv"},
           "rv_errors": {"rv_recorded", "rv_err"}, "bright_sky": set(),
           "lamost_flux_calibration": set()}
    for name, keys in own.items():
        mock, _ = with_effects(base, name)
        lam, desi = draw_survey(ctx, mock, cfg["seed"])
        for before, after in ((lam0, lam), (desi0, desi)):
            assert set(after) - set(before) == keys, name
            for k, v in before.items():
                assert np.array_equal(v, after[k]), (name, k)


def test_extinction_steepens_the_slope_by_the_extinction_curve(base):
    """LAMOST flux with extinction over flux without (noise negligible) is the CCM89
    transmission: its ln ratio between 4200 and 5500 A is -0.921 E(B-V) R_V (k(4200) -
    k(5500)); more reddening, redder spectrum."""
    from specbridge.mock.survey import observe_lamost

    _, ctx0 = with_effects(base)
    mock, ctx = with_effects(base, "extinction")
    p = dict(mock["extinction"], dibs=False)
    ctx.effects.extinction.update(p)
    ebv = 0.4
    off = observe_lamost(ctx0, one_star(), np.random.default_rng(3))["flux"][0]
    on = observe_lamost(ctx, one_star(ebv=ebv), np.random.default_rng(3))["flux"][0]
    w = ctx.lamost_wave
    ratio = np.log(on / off)
    got = np.median(ratio[np.abs(w - 4200) < 20]) - np.median(ratio[np.abs(w - 5500) < 20])
    k = effects.ccm89(np.array([4200.0, 5500.0]), p["r_v"])
    want = -0.4 * np.log(10) * ebv * p["r_v"] * (k[0] - k[1])
    assert want < -0.1  # reddening makes the blue fainter
    assert got == pytest.approx(want, rel=0.02)


def test_ccm89_is_the_published_curve():
    # A_lambda / A_V at R_V = 3.1 (CCM89, table 3): V 1.000, B 1.337, R 0.751, I 0.479
    k = effects.ccm89(np.array([5494.0, 4400.0, 7000.0, 9000.0]), 3.1)
    np.testing.assert_allclose(k, [1.0, 1.337, 0.751, 0.479], atol=0.02)


def test_dib_equivalent_widths_scale_with_reddening():
    """EW(4430) = 2.0 A and EW(5780) = 0.5 A per mag E(B-V) (the 4430 band's Lorentzian
    counted out to +-10 FWHM: 96.8 %), whatever the line-spread function."""
    wave = np.arange(4000.0, 6000.0, 0.05)
    for lsf in (0.0, 2.5):
        t = effects.dib_factor(wave, np.array([0.1, 0.3]), lsf)
        for lo, hi, per_ebv in ((4229.0, 4630.0, 2.0 * 0.968), (5770.0, 5790.0, 0.5)):
            sel = (wave > lo) & (wave < hi)
            ew = np.sum(1.0 - t[:, sel], axis=1) * 0.05
            np.testing.assert_allclose(ew / np.array([0.1, 0.3]), per_ebv, rtol=0.05)


def test_overlap_stars_share_extinction_and_companion_not_their_rv_errors(base):
    from specbridge.mock.survey import draw_survey

    cfg, ctx = base
    mock, _ = with_effects(base, "extinction", "binaries", "rv_errors")
    lam, desi = draw_survey(ctx, mock, cfg["seed"])
    li, di = np.flatnonzero(lam["overlap"]), np.flatnonzero(desi["overlap"])
    order_l, order_d = np.argsort(lam["gaia_id"][li]), np.argsort(desi["gaia_id"][di])
    li, di = li[order_l], di[order_d]
    assert np.array_equal(lam["gaia_id"][li], desi["gaia_id"][di]) and li.size == 200
    for key in ("ebv", "comp_flux", "comp_teff", "comp_dv"):
        assert np.array_equal(lam[key][li], desi[key][di]), key
    assert not np.allclose(lam["rv_recorded"][li], desi["rv_recorded"][di])
    # the reddening follows the line of sight: LAMOST's low-latitude fields are redder
    assert np.median(lam["ebv"][~lam["overlap"]]) > 1.5 * np.median(desi["ebv"])


def test_rv_errors_have_the_configured_distributions(base):
    from specbridge.mock.survey import _lamost_header, draw_survey

    cfg, ctx = base
    mock, _ = with_effects(base, "rv_errors")
    lam, desi = draw_survey(ctx, mock, cfg["seed"])
    p = mock["rv_errors"]
    d_lam = lam["rv_recorded"] - lam["rv"]
    d_desi = desi["rv_recorded"] - desi["rv"]
    assert np.std(d_lam) == pytest.approx(p["lamost_kms"], rel=0.06)
    core = np.abs(d_desi) < 6 * p["desi_kms"]
    assert np.std(d_desi[core]) == pytest.approx(p["desi_kms"], rel=0.08)
    assert 0.3 * p["desi_outlier_fraction"] < np.mean(~core) < 2 * p["desi_outlier_fraction"]
    # the LAMOST header's Z is the recorded RV, not the true one
    star = {k: v[0] for k, v in lam.items()}
    z = {c["name"]: c["value"] for c in _lamost_header(star, np.ones(5), "x.fits", "table")}
    assert z["Z"] * physics.C_KMS == pytest.approx(lam["rv_recorded"][0], abs=1e-6)
    assert z["Z_ERR"] * physics.C_KMS == pytest.approx(p["lamost_kms"])


def test_binary_fraction_and_companions(base):
    from specbridge.mock.survey import draw_survey, rest_frame, subset

    cfg, ctx = base
    mock, _ = with_effects(base, "binaries")
    lam, _ = draw_survey(ctx, mock, cfg["seed"])
    b = lam["comp_flux"] > 0
    frac = mock["binaries"]["fraction"]
    assert abs(b.mean() - frac) < 3 * np.sqrt(frac * (1 - frac) / b.size)
    assert np.all(lam["comp_teff"][b] <= np.maximum(lam["teff"][b], 3800.0))
    assert np.all(lam["comp_teff"][b] >= 3800.0)
    # a giant's dwarf companion is invisible; a dwarf's can be a third of the light or more
    giant = lam["logg"] < 3.0
    assert np.max(lam["comp_flux"][b & giant]) < 0.05
    assert np.max(lam["comp_flux"][b & ~giant]) > 0.3
    # only the binaries' spectra change, and labels stay the primary's
    idx = np.flatnonzero(b)[:5].tolist() + np.flatnonzero(~b)[:5].tolist()
    with_comp = rest_frame(ctx, subset(lam, np.array(idx)))
    single = subset(lam, np.array(idx))
    single.pop("comp_flux")
    alone = rest_frame(ctx, single)
    diff = np.max(np.abs(with_comp / alone - 1.0), axis=1)
    assert np.all(diff[:5] > 1e-4) and np.all(diff[5:] == 0.0)


def test_survey_priors_differ_in_the_expected_direction(base):
    """DESI MWS: more metal-poor and more turn-off stars, fainter (r = 16-19); the
    LAMOST-APOGEE overlap: more giants, higher S/N. Without the priors both surveys draw from
    one distribution."""
    from specbridge.mock.survey import draw_stars

    _, ctx = base

    def summary(survey, priors):
        s = draw_stars(ctx, survey, 3000, 11, survey_priors=priors)
        turnoff = (s["logg"] >= 3.6) & (s["logg"] <= 4.3) & (s["teff"] >= 5500)
        return {"mp": np.mean(s["feh"] <= -1), "giant": np.mean(s["logg"] < 3.5),
                "turnoff": np.mean(turnoff), **s}

    lam, desi = summary("lamost", True), summary("desi", True)
    assert desi["mp"] > lam["mp"] + 0.15
    assert lam["giant"] > desi["giant"] + 0.15
    assert desi["turnoff"] > 1.5 * lam["turnoff"]
    assert desi["mag_r"].min() >= 16.0 and np.median(desi["mag_r"]) > 17.8
    lam1, desi1 = summary("lamost", False), summary("desi", False)
    assert np.median(lam["snr"]) > 1.2 * np.median(lam1["snr"])
    for k in ("mp", "giant", "turnoff"):
        assert abs(lam1[k] - desi1[k]) < 0.05, k


def test_lamost_calibration_wiggles_survive_a_degree5_continuum(base):
    """The realistic LAMOST distortion is ~10 % rms, and its 200-500 A wiggles (2 % rms) are
    not removed by a degree-5 polynomial, unlike the low-order distortion of the mock before
    (switched off)."""
    _, ctx = base
    w = ctx.lamost_wave
    sel = (w > 4000) & (w < 5600)
    x = (w[sel] - 4800.0) / 800.0

    def left_after_poly5(calib):
        ln = np.log(calib[:, sel])
        coef = np.polynomial.polynomial.polyfit(x, ln.T, 5)
        return np.sqrt(np.mean((ln - np.polynomial.polynomial.polyval(x, coef)) ** 2, axis=1))

    new = effects.lamost_calibration(w, np.random.default_rng(1), 300, 0.10, 0.02,
                                     (200.0, 500.0))
    old = physics.calibration_distortion(w, np.random.default_rng(1), 300, 0.08, 3)
    rms = np.sqrt(np.mean(np.log(new) ** 2))
    assert 0.07 < rms < 0.14
    assert np.median(left_after_poly5(new)) > 0.008
    assert np.median(left_after_poly5(old)) < 1e-3


def test_survey_effects_on_observations_touch_only_their_survey(base):
    """The bright sky changes DESI (the continuum's photon noise in a longer exposure; a
    sky-subtraction residual) and not LAMOST; the LAMOST calibration changes LAMOST and not
    DESI; with either switched on, the other survey's files are bit for bit the same."""
    from specbridge.mock.survey import etc_exposure_factor, observe_desi, observe_lamost

    _, ctx0 = with_effects(base)
    _, sky = with_effects(base, "bright_sky")
    _, cal = with_effects(base, "lamost_flux_calibration")
    star = one_star(mag_r=18.0, snr=50.0)

    def both(ctx):
        return (observe_lamost(ctx, star, np.random.default_rng(5)),
                observe_desi(ctx, star, np.random.default_rng(5)))

    (l0, d0), (l1, d1), (l2, d2) = both(ctx0), both(sky), both(cal)
    assert np.array_equal(l0["flux"], l1["flux"])
    assert np.array_equal(d0["B"]["flux"], d2["B"]["flux"])
    assert not np.allclose(l0["flux"], l2["flux"])
    # the continuum's photon noise, in an exposure made longer by the exposure-time
    # calculator's factor k, so that an r = 18 star keeps its dark-time S/N on average
    k = etc_exposure_factor(sky.desi_sky_continuum)
    b = sky.desi_sky_continuum["B"]
    assert k == pytest.approx((0.008 * (2.0 + b.mean()) + 0.02) / (0.008 * 2.0 + 0.02))
    var0, var1 = (1.0 / d["B"]["ivar"][0].astype(float) for d in (d0, d1))
    np.testing.assert_allclose(k * var1 - var0, 0.008 * b, rtol=1e-3)
    assert np.mean(var1) == pytest.approx(np.mean(var0), rel=0.1)
    # a V = 20 mag/arcsec^2 sky is a few times an r = 18 star at 5000 A, bluer than it
    wb = sky.desi_wave["B"]
    assert 1.5 < np.median(b[np.abs(wb - 5000) < 50]) / 2.0 < 8.0
    assert np.median(b[np.abs(wb - 4200) < 50]) > np.median(b[np.abs(wb - 5400) < 50])


def test_sky_subtraction_residual_is_strongest_at_sky_lines(base):
    _, ctx = base
    w = ctx.desi_wave["R"]
    sky = ctx.desi_sky["R"] + 5.0  # lines on a continuum
    r = effects.sky_subtraction_residual(w, sky, np.random.default_rng(2), 4000, 0.015, 0.02)
    line = int(np.argmax(ctx.desi_sky["R"]))
    quiet = int(np.argmin(ctx.desi_sky["R"]))
    assert np.std(r[:, line]) > 5 * np.std(r[:, quiet])
    assert np.std(r[:, quiet]) / sky[quiet] == pytest.approx(0.015, rel=0.1)


def test_effects_absent_from_a_mock_config_are_off():
    eff = SurveyEffects.from_mock({})
    assert not any(eff.on(n) for n in EFFECT_NAMES)
    eff = SurveyEffects.from_mock({"binaries": {"enabled": True, "fraction": 0.3},
                                   "extinction": {"enabled": False, "r_v": 4.0}})
    assert eff.on("binaries") and eff.binaries["fraction"] == 0.3
    assert not eff.on("extinction")
