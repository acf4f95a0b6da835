"""The real-data scoreboard stage on small synthetic validate_real tables with known bias and
scatter."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from specbridge.evaluation.metrics import residual_metrics
from specbridge.labels import column
from specbridge.stages import scoreboard

CFG = {"evaluation": {"feh_threshold": -1.0, "snr_bins": [0, 20, 50, 1000]}}
SIGMA = {"teff": 80.0, "logg": 0.15, "feh": 0.12}
BIAS = {"teff": -30.0, "logg": 0.05, "feh": 0.2}


def real_table(path, name, n, seed, *, visits=1, labels=("teff", "logg", "feh")):
    """A validate_real-like table: ``n`` stars, ``visits`` spectra each (same SPECID; their
    residuals the star's), reference labels, predictions = reference + BIAS + N(0, SIGMA) per
    star, every 25th spectrum without a prediction."""
    rng = np.random.default_rng(seed)
    stars = np.repeat(np.arange(n), visits)
    m = stars.size
    t = Table()
    t["FILE"] = [f"spec-{i:05d}.fits" for i in range(m)]
    t["SPECID"] = 1000 + stars
    t["SNR"] = rng.uniform(5, 120, m)
    t["FLAGS"] = np.zeros(m, np.int64)
    ref = {"teff": rng.uniform(3500, 6500, n), "logg": rng.uniform(1, 5, n),
           "feh": rng.uniform(-2.5, 0.5, n)}
    for lab, col in (("teff", "TEFF"), ("logg", "LOGG"), ("feh", "FEH"),
                     ("alpha_fe", "ALPHA_FE")):
        r = ref[lab][stars] if lab in labels else np.full(m, np.nan)
        pred = (r + BIAS[lab] + rng.normal(0, SIGMA[lab], n)[stars] if lab in labels
                else rng.normal(0, 0.1, m))
        t[f"{col}_REF"], t[f"{col}_PRED"] = r, pred
        t[f"{col}_PRED_ERR"] = np.full(m, 0.1)
    for col in ("TEFF_PRED", "LOGG_PRED", "FEH_PRED", "ALPHA_FE_PRED"):
        t[col][::25] = np.nan                   # 4 % without a prediction
    summary = [{"label": lab, **residual_metrics(t[f"{column(lab)}_PRED"],
                                                 t[f"{column(lab)}_PRED_ERR"],
                                                 t[f"{column(lab)}_REF"])} for lab in labels]
    t.meta.update({"set": name, "reference": f"synthetic {name}", "model": "pretrained.pt",
                   "summary": summary})
    t.write(path, format="ascii.ecsv", overwrite=True)
    return t


@pytest.fixture
def board(tmp_path):
    a = real_table(tmp_path / "big.ecsv", "big", 1500, 1)
    b = real_table(tmp_path / "tiny.ecsv", "tiny", 4, 2)    # fewer than 5 labelled rows
    out = {"table": tmp_path / "board.ecsv", "markdown": tmp_path / "board.md"}
    assert scoreboard.run(CFG, {"real": [tmp_path / "big.ecsv", tmp_path / "tiny.ecsv"]},
                          out, n_boot=300) == 0
    return Table.read(out["table"], format="ascii.ecsv"), out, a, b


def _row(t, **sel):
    m = np.ones(len(t), bool)
    for k, v in sel.items():
        m &= t[k] == v
    assert m.sum() == 1, sel
    return t[m][0]


def test_bias_and_sigma_recover_the_truth_within_their_intervals(board):
    t, _, a, _ = board
    assert list(t.colnames) == list(scoreboard.COLUMN_NAMES)
    for lab in ("teff", "logg", "feh"):
        r = _row(t, set="big", label=lab, snr_bin="all", regime="all")
        assert r["n_spectra"] == 1500 and r["n_labelled"] == 1500 and r["n"] == 1440
        assert r["pred_fraction"] == pytest.approx(0.96)
        assert r["bias_lo"] <= r["bias"] <= r["bias_hi"]
        assert r["robust_sigma_lo"] <= r["robust_sigma"] <= r["robust_sigma_hi"]
        # 68 % intervals: the truth within 3 half-widths; the width of a 68 % one
        half = (r["bias_hi"] - r["bias_lo"]) / 2
        assert abs(r["bias"] - BIAS[lab]) < 3 * half
        # the bootstrap width of a median is itself noisy
        assert half == pytest.approx(1.2533 * SIGMA[lab] / np.sqrt(1440), rel=0.5)
        half = (r["robust_sigma_hi"] - r["robust_sigma_lo"]) / 2
        assert abs(r["robust_sigma"] - SIGMA[lab]) < 3 * half
    # the 95 % intervals cover the truth (a 68 % one misses it a third of the time)
    rows = scoreboard.set_rows("big", a, [0, 20, 50, 1000], -1.0, n_boot=300, level=0.95)
    for lab in ("teff", "logg", "feh"):
        r = next(r for r in rows if r["label"] == lab and r["snr_bin"] == r["regime"] == "all")
        assert r["bias_lo"] < BIAS[lab] < r["bias_hi"], lab
        assert r["robust_sigma_lo"] < SIGMA[lab] < r["robust_sigma_hi"], lab
    assert r["unit"] == "dex" and _row(t, set="big", label="teff", snr_bin="all",
                                       regime="all")["unit"] == "K"


def test_cells_by_snr_bin_and_regime(board):
    t, _, a, _ = board
    snr, feh = np.asarray(a["SNR"]), np.asarray(a["FEH_REF"])
    assert set(t["snr_bin"]) == {"all", "0-20", "20-50", "50-1000"}
    assert set(t["regime"]) == {"all", "metal_poor", "metal_rich"}
    r = _row(t, set="big", label="logg", snr_bin="20-50", regime="metal_poor")
    assert r["n_spectra"] == int(((snr >= 20) & (snr < 50) & (feh <= -1.0)).sum())
    assert np.isfinite(r["robust_sigma"])
    # a label the set has no reference for: rows with n_labelled 0 and NaN statistics
    r = _row(t, set="big", label="alpha_fe", snr_bin="all", regime="all")
    assert r["n_labelled"] == 0 and r["n"] == 0 and np.isnan(r["bias"])
    assert np.isnan(r["pred_fraction"])
    # every set x label x bin x regime
    assert len(t) == 2 * 4 * 4 * 3


def test_fewer_than_five_rows_keep_n_and_nan_statistics(board):
    t, *_ = board
    tiny = t[t["set"] == "tiny"]
    assert len(tiny) and (tiny["n"] < 5).all()
    for c in ("bias", "bias_lo", "bias_hi", "robust_sigma", "robust_sigma_lo",
              "robust_sigma_hi"):
        assert np.isnan(tiny[c]).all(), c
    assert _row(t, set="tiny", label="feh", snr_bin="all", regime="all")["n"] == 3


def test_markdown_puts_whole_sets_first(board):
    t, out, *_ = board
    md = out["markdown"].read_text()
    assert md.startswith("# Real labelled spectra: scoreboard")
    head, _, tail = md.partition("## By S/N bin and regime")
    assert "## Whole sets" in head and tail
    assert "| big | feh | dex |" in head and "| tiny | feh | dex | 3 | 3 | 3/4 | — | — |" in head
    assert "| big | feh | dex | 50-1000 | metal_rich |" in tail
    assert "alpha_fe" not in tail                        # no labelled spectrum: not shown
    assert t.meta["n_boot"] == 300 and t.meta["level"] == 0.68
    assert [s["name"] for s in t.meta["sets"]] == ["big", "tiny"]


def test_repeat_visits_are_resampled_together(tmp_path):
    real_table(tmp_path / "once.ecsv", "once", 600, 3)
    real_table(tmp_path / "twice.ecsv", "twice", 600, 3, visits=2)
    out = {"table": tmp_path / "b.ecsv"}
    scoreboard.run(CFG, {"real": [tmp_path / "once.ecsv", tmp_path / "twice.ecsv"]}, out,
                   n_boot=300)
    t = Table.read(out["table"], format="ascii.ecsv")
    once = _row(t, set="once", label="feh", snr_bin="all", regime="all")
    twice = _row(t, set="twice", label="feh", snr_bin="all", regime="all")
    assert twice["n"] == 2 * 576 and twice["n_stars"] == 600 and once["n_stars"] == 576
    w1 = once["robust_sigma_hi"] - once["robust_sigma_lo"]
    w2 = twice["robust_sigma_hi"] - twice["robust_sigma_lo"]
    assert w2 > 0.8 * w1        # twice the spectra of the same stars: not a narrower interval


def test_no_real_set_gives_an_empty_scoreboard(tmp_path):
    out = {"table": tmp_path / "b.ecsv", "markdown": tmp_path / "b.md"}
    assert scoreboard.run(CFG, {"real": []}, out) == 0
    t = Table.read(out["table"], format="ascii.ecsv")
    assert len(t) == 0 and list(t.colnames) == list(scoreboard.COLUMN_NAMES)
    assert "No real labelled set" in out["markdown"].read_text()


def test_star_ids():
    t = Table({"FILE": ["a.fits", "b.fits", "c.fits"], "SPECID": [7, -5, 7]})
    ids = scoreboard.star_ids(t)
    assert ids[0] == ids[2] != ids[1] and ids[1] == "F:b.fits"
    t["LABEL_ID"] = ["x", "", "y"]
    ids = scoreboard.star_ids(t)
    assert list(ids) == ["L:x", "F:b.fits", "L:y"]


def test_report_section_and_cli(board, tmp_path):
    from specbridge.report.page import real_sections, scoreboard_section

    t, *_ = board
    text = "\n".join(scoreboard_section(t))
    assert "<h2>Real labelled spectra: scoreboard</h2>" in text and "<table>" in text
    assert "<td>big</td><td>feh</td><td>dex</td><td>1440</td>" in text
    assert "<h3>Calibration on a few real labels</h3>" in text
    assert scoreboard_section(None) == []
    assert "<h3>big: synthetic big</h3>" in "\n".join(real_sections([tmp_path / "big.ecsv"],
                                                                      tmp_path))
    r = subprocess.run([sys.executable, "-m", "specbridge", "scoreboard", "--config",
                        str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "x.ecsv")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_datamodel_page_lists_every_column(repo):
    page = (repo / "docs" / "datamodel" / "scoreboard.md").read_text()
    for name, *_ in scoreboard.COLUMNS:
        assert f"| `{name}` |" in page, name


def test_few_label_calibration_removes_the_offset_to_its_known_precision():
    from specbridge.evaluation import few_label

    rng = np.random.default_rng(3)
    n, sigma, bias = 400, 0.12, -0.2
    stars = np.repeat(np.arange(n), 2)           # two visits a star, the same residual
    resid = (bias + rng.normal(0, sigma, n))[stars]
    for n_cal in (5, 20):
        got = few_label.draws(resid, stars, n_cal, n_draw=400, seed=1)
        # the offset is the median of n_cal stars: unbiased, spread 1.2533 sigma / sqrt(n_cal)
        assert np.median(got["bias"]) == pytest.approx(0.0, abs=0.3 * sigma / np.sqrt(n_cal))
        lo, hi = np.percentile(got["bias"], [16, 84])
        assert (hi - lo) / 2 == pytest.approx(1.2533 * sigma / np.sqrt(n_cal), rel=0.3)
        assert np.median(got["sigma"]) == pytest.approx(sigma, rel=0.1)
    # too few stars: nothing to hold out
    assert few_label.draws(resid[:10], stars[:10], 5)["bias"].size == 0


def test_scoreboard_carries_the_few_label_calibration(board):
    t, out, _, _ = board
    rows = t.meta["few_label"]
    big = [r for r in rows if r["set"] == "big" and r["label"] == "feh"]
    assert [r["n_cal"] for r in big] == [5, 10, 20]
    for r in big:
        assert r["bias_before"] == pytest.approx(BIAS["feh"], abs=0.03)
        assert abs(r["bias_after"]) < abs(r["bias_before"]) / 4
    assert not [r for r in rows if r["set"] == "tiny"]   # 4 stars: too few to hold out
    assert "## Calibration on a few real labels" in out["markdown"].read_text()


def test_label_efficiency_table_in_the_report(tmp_path):
    from astropy.table import Table

    from specbridge.errors import UserError
    from specbridge.report.page import label_efficiency_section
    from specbridge.stages.report import read_label_efficiency

    rows = [{"strategy": "zeroshot", "n_labelled": n, "label": "feh", "unit": "dex",
             "regime": "all", "n_test": 700, "sigma_spectrum": 0.1, "sigma_embedding": 0.15,
             "ratio": 1.5, "ratio_lo": 1.4, "ratio_hi": 1.61, "embedding_better": "no"}
            for n in (250, 500)]
    path = tmp_path / "label_efficiency.ecsv"
    t = Table(rows=rows)
    t.meta["level"] = 0.95
    t.write(path, format="ascii.ecsv")
    (tmp_path / "label_efficiency.png").write_bytes(b"\x89PNG")
    page = "\n".join(label_efficiency_section(read_label_efficiency(str(path)),
                                              tmp_path / "report"))
    assert "1.50 [1.40, 1.61]" in page and page.count("<tr>") == 3  # header + 2 rows
    assert "95 %" in page and "../label_efficiency.png" in page
    assert label_efficiency_section(None, tmp_path) == []
    Table(rows=[{"a": 1}]).write(tmp_path / "other.ecsv", format="ascii.ecsv")
    with pytest.raises(UserError, match="not a label-efficiency table"):
        read_label_efficiency(str(tmp_path / "other.ecsv"))
