"""Prediction with per-input-kind usable masks, and routing that survives a missing router
value: unit tests of read_inputs / predict_shard / route, and the end-to-end case of a star
whose SpecFormer embedding is not finite (it keeps its spectrum-MLP values in the prediction
shards and the VAC)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table
from conftest import run_specbridge

from specbridge import flags
from specbridge.inference.predict import (
    Candidate,
    predict_all,
    predict_shard,
    read_inputs,
)
from specbridge.inference.routing import METAL_POOR, METAL_RICH, NO_REGIME, route
from specbridge.io.shards import (
    ROW_FIELDS,
    read_index,
    read_shard,
    write_embedding_shard,
    write_shard,
)
from specbridge.vac.catalogue import candidate_names, read_fits_tables

LABELS = ["teff", "logg", "feh", "alpha_fe"]


# ---- route(): the fallback where the router gives no [Fe/H] ----------------------------------

def _preds():
    """Three candidates on 6 rows; the router 'a' has NaN [Fe/H] on rows 3-5."""
    labels = ["teff", "feh"]
    feh_a = np.array([-2.0, -0.5, 0.1, np.nan, np.nan, np.nan])
    a = (np.column_stack([np.full(6, 5000.0), feh_a]), np.full((6, 2), 0.1))
    b = (np.column_stack([np.full(6, 6000.0), [-1.9, -0.4, 0.2, -2.0, np.nan, np.nan]]),
         np.full((6, 2), 0.2))
    c = (np.column_stack([[7000.0, 7000, 7000, 7000, 7000, np.nan],
                          [-1.8, -0.3, 0.3, 0.5, -1.5, np.nan]]), np.full((6, 2), 0.3))
    sel = {("teff", "metal_poor"): "a", ("teff", "metal_rich"): "c",
           ("feh", "metal_poor"): "c", ("feh", "metal_rich"): "b"}
    return {"a": a, "b": b, "c": c}, labels, sel


def test_route_falls_back_where_the_router_gives_no_feh():
    preds, labels, sel = _preds()
    names = ["a", "b", "c"]
    r = route(preds, names, labels, sel, "a", -1.0)
    assert list(r.fallback) == [False, False, False, True, True, True]
    # row 3: feh from b (the metal-rich feh selection), -2.0 -> metal-poor
    # row 4: b has none, c (the metal-poor feh selection) gives -1.5 -> metal-poor
    # row 5: nobody has [Fe/H]: each label takes the first finite of (rich, poor)
    assert list(r.regime) == [METAL_POOR, METAL_RICH, METAL_RICH, METAL_POOR, METAL_POOR,
                              NO_REGIME]
    np.testing.assert_array_equal(r.value[3], [5000.0, 0.5])   # teff: a, feh: c
    np.testing.assert_array_equal(r.error[3], [0.1, 0.3])
    np.testing.assert_array_equal(r.value[4], [5000.0, -1.5])
    np.testing.assert_array_equal(r.value[5], [5000.0, np.nan])  # teff: c NaN -> a
    np.testing.assert_array_equal(r.error[5], [0.1, np.nan])
    assert r.served[3].tolist() == [0, 2] and r.served[4].tolist() == [0, 2]
    assert r.served[5].tolist() == [0, -1]
    # rows with a finite router value: exactly what the same rows give on their own
    keep = slice(0, 3)
    alone = route({k: (v[keep], e[keep]) for k, (v, e) in preds.items()}, names, labels,
                  sel, "a", -1.0)
    np.testing.assert_array_equal(r.value[keep], alone.value)
    np.testing.assert_array_equal(r.error[keep], alone.error)
    np.testing.assert_array_equal(r.regime[keep], alone.regime)
    np.testing.assert_array_equal(r.served[keep], alone.served)
    assert not alone.fallback.any()
    np.testing.assert_array_equal(r.value[:3, 0], [5000.0, 7000.0, 7000.0])
    np.testing.assert_array_equal(r.value[:3, 1], [-1.8, -0.4, 0.2])


def test_route_fallback_blends_on_the_fallback_feh():
    preds, labels, sel = _preds()
    r = route(preds, ["a", "b", "c"], labels, sel, "a", -1.0, blend_width=0.2)
    hard = route(preds, ["a", "b", "c"], labels, sel, "a", -1.0)
    # no fallback [Fe/H] within 0.1 dex of the threshold: blending is hard everywhere
    np.testing.assert_array_equal(r.value, hard.value)
    np.testing.assert_array_equal(r.served, hard.served)


# ---- read_inputs / predict_all / predict_shard on a synthetic shard --------------------------

class _Affine(torch.nn.Module):
    """(mu, log var) = (mean of the input + k, 0) per label: NaN in, NaN out."""

    def __init__(self, n_labels: int, k: float):
        super().__init__()
        self.n, self.k = n_labels, k

    def forward(self, x):
        m = x.reshape(x.shape[0], -1).mean(1, keepdim=True) + self.k
        return m.repeat(1, self.n), torch.zeros(x.shape[0], self.n, dtype=x.dtype)


def _cand(name: str, feature: str, k: float) -> Candidate:
    model, strategy = name.rsplit("_", 1)
    return Candidate(name, model, strategy, feature, _Affine(len(LABELS), k), LABELS,
                     np.zeros(len(LABELS)), np.ones(len(LABELS)), name)


@pytest.fixture()
def small_shard(tmp_path):
    n, npix, dim = 5, 20, 4
    rng = np.random.default_rng(0)
    arrays = {"flux": 1 + 0.01 * rng.standard_normal((n, npix)), "ivar": np.ones((n, npix)),
              "mask": np.zeros((n, npix), np.uint8), "specid": np.arange(10, 10 + n),
              "star": np.arange(110, 110 + n),
              "manifest_row": np.arange(n), "flags": np.zeros(n, np.int64),
              "snr": np.full(n, 20.0, np.float32), "z": np.zeros(n),
              "labels": np.full((n, 4), np.nan, np.float32),
              "label_errors": np.full((n, 4), np.nan, np.float32)}
    arrays["flags"][1] = flags.flag("SKY_FIBER")      # fatal
    arrays["ivar"][2] = 0                               # no data
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb[3, 1] = np.nan                                  # non-finite embedding only
    write_shard(tmp_path / "s.h5", arrays, {"first_row": 0})
    write_embedding_shard(tmp_path / "e.h5", {"embedding": emb,
                                              **{f: arrays[f] for f in ROW_FIELDS}}, {})
    return {"path": str(tmp_path / "s.h5"), "emb_path": str(tmp_path / "e.h5"),
            "first_row": 0, "n": n}


def test_read_inputs_gives_one_usable_mask_per_input_kind(small_shard):
    d = read_inputs(small_shard, {"flux", "spectrum", "embedding"})
    assert d["usable_flux"].tolist() == [True, False, False, True, True]
    assert d["usable_spectrum"].tolist() == d["usable_flux"].tolist()
    assert d["usable_embedding"].tolist() == [True, False, False, False, True]
    assert d["usable"].tolist() == d["usable_flux"].tolist()  # backward compatible
    assert "usable_embedding" not in read_inputs(small_shard, {"flux"})
    preds = predict_all([_cand("mlp_zeroshot", "flux", 0.0),
                         _cand("emb_mlp_zeroshot", "embedding", 5.0)], d)
    assert np.isfinite(preds["mlp_zeroshot"][0][[0, 3, 4]]).all()
    assert np.isnan(preds["mlp_zeroshot"][0][[1, 2]]).all()
    assert np.isfinite(preds["emb_mlp_zeroshot"][0][[0, 4]]).all()
    assert np.isnan(preds["emb_mlp_zeroshot"][0][[1, 2, 3]]).all()


def test_predict_shard_flags_partial_and_unrouted_rows(small_shard):
    cands = [_cand("mlp_zeroshot", "flux", -1.5), _cand("emb_mlp_zeroshot", "embedding", 0.0)]
    routing = {"router": "mlp_zeroshot", "threshold": -1.0, "blend_width": 0.0}
    # teff from the embedding MLP in both regimes, everything else from the spectrum MLP
    sel = {(lab, rg): "emb_mlp_zeroshot" if lab == "teff" else "mlp_zeroshot"
           for lab in LABELS for rg in ("metal_poor", "metal_rich")}
    a, counts = predict_shard(cands, small_shard, LABELS, sel, routing, 2)
    fl = a["flags"]
    # row 3 (NaN embedding): teff NaN, the rest finite; not failed, not fatal
    assert np.isnan(a["value"][3, 0]) and np.isfinite(a["value"][3, 1:]).all()
    assert a["served"][3].tolist() == [-1, 0, 0, 0]
    assert np.isfinite(a["candidate_value"][0, 3]).all()
    assert np.isnan(a["candidate_value"][1, 3]).all()
    assert fl[3] == 0
    # row 2 (no data, no fatal flag before): PREDICTION_FAILED; row 1 keeps its fatal flag
    assert fl[2] == flags.flag("PREDICTION_FAILED")
    assert fl[1] == flags.flag("SKY_FIBER")
    assert sum(counts.values()) == 1
    assert fl[0] == fl[4] == 0 and np.isfinite(a["value"][[0, 4]]).all()
    # the embedding MLP as router: row 3 falls back to the spectrum MLP's [Fe/H]
    b, _ = predict_shard(cands, small_shard, LABELS, sel, {**routing,
                                                            "router": "emb_mlp_zeroshot"}, 2)
    assert b["flags"][3] == flags.flag("NOT_ROUTED")
    assert b["regime"][3] == METAL_POOR  # the spectrum MLP says about -1.5
    np.testing.assert_array_equal(b["value"][3], a["value"][3])
    assert b["flags"][2] == flags.flag("PREDICTION_FAILED")  # nothing at all: failed only
    assert b["flags"][0] == b["flags"][4] == 0  # routed by the embedding MLP itself
    assert not flags.is_fatal(flags.flag("NOT_ROUTED"))


def test_predict_shard_recalibrates_errors_before_routing(small_shard):
    cands = [_cand("mlp_zeroshot", "flux", -1.5), _cand("emb_mlp_zeroshot", "embedding", 0.0)]
    sel = {(lab, rg): "emb_mlp_zeroshot" if lab == "teff" else "mlp_zeroshot"
           for lab in LABELS for rg in ("metal_poor", "metal_rich")}
    routing = {"router": "mlp_zeroshot", "threshold": -1.0, "blend_width": 0.0,
               "blend": "probability", "router_passes": 1}
    calib = {("mlp_zeroshot", lab): (2.0, 0.5) for lab in LABELS}
    raw, _ = predict_shard(cands, small_shard, LABELS, sel, routing, 2)
    cal, _ = predict_shard(cands, small_shard, LABELS, sel, routing, 2, calib)
    ok = np.isfinite(raw["candidate_error"][0, :, 0])
    # the predicted 1-sigma is 1: recalibrated sqrt((2 x 1)^2 + 0.5^2)
    np.testing.assert_allclose(cal["candidate_error"][0][ok], np.sqrt(4.25), rtol=1e-6)
    np.testing.assert_array_equal(cal["candidate_error"][1], raw["candidate_error"][1])
    np.testing.assert_allclose(cal["error"][ok][:, 1:], np.sqrt(4.25), rtol=1e-6)
    # one candidate per label in both regimes: the blend gives exactly its values
    np.testing.assert_array_equal(cal["value"], raw["value"])


# ---- end to end: a NaN embedding through evaluate, infer and the VAC -------------------------

@pytest.fixture(scope="session")
def embedding_run(transfer_run, tmp_path_factory, tool_env):
    """The transfer run plus a tiny SpecFormer, DESI and LAMOST embeddings, a pretrained and
    a zero-shot embedding MLP; one usable DESI row's embedding set to NaN afterwards."""
    d = tmp_path_factory.mktemp("embrun")
    cfg = yaml.safe_load(transfer_run["config"].read_text())
    cfg["models"]["specformer"] = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    cfg["models"]["emb_mlp"] = {"hidden": [32, 16], "dropout": 0.0}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    conf = ["--config", d / "config.yaml"]
    index = transfer_run["index"]
    run_specbridge(["pretrain", *conf, "--model", "specformer", "--spectra", index["lamost"],
                    "--epochs", "1", "--output", d / "sf.pt"], tool_env)
    emb = {s: d / "emb" / s / "index.h5" for s in ("lamost", "desi")}
    for s in emb:
        run_specbridge(["embed", *conf, "--model", d / "sf.pt", "--spectra", index[s],
                        "--output", emb[s]], tool_env)
    run_specbridge(["pretrain", *conf, "--model", "emb_mlp", "--spectra", index["lamost"],
                    "--embeddings", emb["lamost"], "--epochs", "3", "--output",
                    d / "emb_mlp.pt"], tool_env)
    run_specbridge(["finetune", *conf, "--model", "emb_mlp", "--strategy", "zeroshot",
                    "--pretrained", d / "emb_mlp.pt", "--spectra", index["desi"],
                    "--embeddings", emb["desi"], "--output", d / "emb_mlp_zeroshot.pt"],
                   tool_env)
    # the NaN row: the first usable row of the second DESI shard
    shard = read_index(index["desi"])[1]
    eshard = read_index(emb["desi"])[1]
    s = read_shard(shard["path"], ("ivar", "flags", "manifest_row"))
    j = int(np.flatnonzero(~flags.is_fatal(s["flags"]) & (s["ivar"] > 0).any(1))[0])
    with h5py.File(eshard["path"], "r+") as h:
        assert np.isfinite(h["embedding"][j]).all()
        h["embedding"][j] = np.nan
    cands = [*transfer_run["cands"].values(), d / "emb_mlp_zeroshot.pt"]
    return {"dir": d, "config": d / "config.yaml", "emb": emb, "cands": cands,
            "nan_row": int(s["manifest_row"][j]), "nan_shard": 1, "nan_index": j}


def _infer_and_vac(run, tool_env, tag, router=None):
    d = run["dir"]
    cfg = run["config"]
    if router:
        c = yaml.safe_load(cfg.read_text())
        c["inference"]["router"] = router
        cfg = d / f"config-{tag}.yaml"
        cfg.write_text(yaml.safe_dump(c))
    out = d / tag
    run_specbridge(["infer", "--config", cfg, "--checkpoints", *run["cands"], "--selection",
                    run["selection"], "--spectra", run["spectra"], "--embeddings",
                    run["emb"]["desi"], "--output", out / "inf" / "index.h5"], tool_env)
    run_specbridge(["vac", "--config", cfg, "--predictions", out / "inf" / "index.h5",
                    "--manifest", run["manifest"], "--fits", out / "vac.fits", "--hdf5",
                    out / "vac.h5"], tool_env)
    pred = read_shard(read_index(out / "inf" / "index.h5")[run["nan_shard"]]["path"],
                      ("manifest_row", "flags", "value", "served", "regime",
                       "candidate_value"))
    vac = read_fits_tables(out / "vac.fits")
    vac["CANDNAMES"] = candidate_names(out / "vac.fits")  # what *_SOURCE indexes
    return pred, vac


@pytest.fixture(scope="session")
def nan_embedding_outputs(embedding_run, transfer_run, tool_env):
    run = dict(embedding_run)
    d = run["dir"]
    run["spectra"] = transfer_run["index"]["desi"]
    run["manifest"] = transfer_run["dir"] / "desi.fits"
    ev = d / "eval"
    run_specbridge(["evaluate", "--config", run["config"], "--checkpoints", *run["cands"],
                    "--spectra", run["spectra"], "--embeddings", run["emb"]["desi"],
                    "--metrics", ev / "m.ecsv", "--metrics-md", ev / "m.md", "--selection",
                    ev / "sel.ecsv", "--summary", ev / "s.ecsv", "--predictions", ev / "p.h5",
                    "--calibration", ev / "calib.ecsv"], tool_env)
    # make the embedding MLP serve teff in both regimes and spectrum MLPs the rest, whatever
    # the tiny models' metrics chose
    sel = Table.read(ev / "sel.ecsv", format="ascii.ecsv")
    sel["candidate"] = sel["candidate"].astype("U32")  # read back as wide as its longest
    for r in sel:
        r["candidate"] = ("emb_mlp_zeroshot" if r["label"] == "teff" else
                          "mlp_full" if r["label"] == "feh" and r["regime"] == "metal_rich"
                          else "mlp_zeroshot")
    sel.write(d / "selection.ecsv", format="ascii.ecsv", overwrite=True)
    run["selection"] = d / "selection.ecsv"
    return run, {"mlp_router": _infer_and_vac(run, tool_env, "mlp_router"),
                 "emb_router": _infer_and_vac(run, tool_env, "emb_router",
                                              router="emb_mlp_zeroshot")}


def test_evaluate_calibrates_the_desi_ood_thresholds_beyond_the_validation_stars(
        nan_embedding_outputs):
    """The DESI out-of-domain thresholds come from every labelled star outside the test split
    (the fine-tuning stars too), not from the validation stars alone."""
    run, _ = nan_embedding_outputs
    ev = run["dir"] / "eval"
    meta = Table.read(ev / "calib.ecsv", format="ascii.ecsv").meta
    with h5py.File(ev / "p.h5") as h:
        split, score = h["split"][()], h["ood_score"][()]
    n_val = int(((split == 1) & np.isfinite(score)).sum())
    assert meta["ood_calibration_splits"] == "train+val"
    assert n_val >= 20 and meta["ood_threshold_n"] > n_val
    assert 0 <= meta["ood_calibration_flagged"] <= 0.01 + 1e-9


def _text(v) -> str:
    return (v.decode() if isinstance(v, bytes) else str(v)).strip()


def test_nan_embedding_keeps_spectrum_mlp_values(nan_embedding_outputs):
    run, out = nan_embedding_outputs
    pred, vac = out["mlp_router"]
    j, row = run["nan_index"], run["nan_row"]
    names = [p.stem for p in run["cands"]]
    emb_k = names.index("emb_mlp_zeroshot")
    assert pred["manifest_row"][j] == row
    # prediction shard: every spectrum-MLP candidate has values, the embedding MLP none
    cv = pred["candidate_value"][:, j]
    assert np.isnan(cv[emb_k]).all()
    assert np.isfinite(np.delete(cv, emb_k, axis=0)).all()
    # routed: teff (served by the embedding MLP) NaN, the others finite; not failed
    assert np.isnan(pred["value"][j, 0]) and pred["served"][j, 0] == -1
    assert np.isfinite(pred["value"][j, 1:]).all()
    assert not flags.is_fatal(pred["flags"][j])
    assert not pred["flags"][j] & flags.flag("PREDICTION_FAILED")
    # the other usable rows of the shard: the embedding MLP predicts them
    ok = ~flags.is_fatal(pred["flags"])
    ok[j] = False
    assert np.isfinite(pred["candidate_value"][emb_k][ok]).all()
    # the VAC
    p, c = vac["PARAMS"][row], vac["CANDIDATES"][row]
    assert np.isnan(p["TEFF"]) and p["TEFF_SOURCE"] == -1
    for lab in ("LOGG", "FEH", "ALPHA_FE"):
        assert np.isfinite(p[lab]) and np.isfinite(p[f"{lab}_ERR"]), lab
        assert vac["CANDNAMES"][p[f"{lab}_SOURCE"]].startswith("mlp_"), lab
    assert not flags.is_fatal(p["FLAGS"]) and p["REGIME"] in (METAL_POOR, METAL_RICH)
    for name in names:
        for lab in LABELS:
            v = c[f"{name}_{lab}".upper()]
            assert np.isnan(v) if name == "emb_mlp_zeroshot" else np.isfinite(v), (name, lab)


def test_nan_router_value_falls_back_and_flags_not_routed(nan_embedding_outputs):
    run, out = nan_embedding_outputs
    j, row = run["nan_index"], run["nan_row"]
    pred, vac = out["emb_router"]
    ref, _ = out["mlp_router"]
    assert pred["flags"][j] & flags.flag("NOT_ROUTED")
    assert not flags.is_fatal(pred["flags"][j])
    # the regime came from the metal-rich feh selection (mlp_full) or mlp_zeroshot
    assert pred["regime"][j] in (METAL_POOR, METAL_RICH)
    assert np.isfinite(pred["value"][j, 1:]).all()
    p = vac["PARAMS"][row]
    assert "NOT_ROUTED" in flags.decode(p["FLAGS"]).item().split(",")
    # rows where the embedding MLP has [Fe/H] are routed by it, without the flag
    ok = np.isfinite(pred["candidate_value"][-1, :, 2])
    assert not (pred["flags"][ok] & flags.flag("NOT_ROUTED")).any()
    assert ref["regime"].shape == pred["regime"].shape
