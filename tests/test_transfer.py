"""Transfer to DESI: each strategy trains exactly what it should; evaluation, selection and
routing on real fine-tuned candidates; selection is a pure function of validation metrics."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from astropy.table import Table
from conftest import LORA, run_specbridge

from specbridge.evaluation.selection import select, selection_mapping
from specbridge.inference.routing import METAL_POOR, METAL_RICH, NO_REGIME, route
from specbridge.io.manifest import read_manifest
from specbridge.models.mlp import SpectrumMLP
from specbridge.models.transfer import (
    STRATEGIES,
    build_transfer_model,
    load_candidate,
    trainable_parameters,
)


def test_trainable_parameter_counts_production_size():
    """The paper-size MLP (1462-1024-512-64, 4 labels): what each strategy trains."""
    counts = {s: trainable_parameters(build_transfer_model(
        SpectrumMLP(1462, (1024, 512, 64), 4), s, 64, LORA)) for s in STRATEGIES}
    full = sum(p.numel() for p in SpectrumMLP(1462, (1024, 512, 64), 4).parameters())
    heads = 2 * (64 * 4 + 4)
    assert counts == {
        "zeroshot": 0,
        "adapter": 64 * (64 + 1) + (64 + 1) * 8,                       # 64 -> 64 -> 2 x 4
        "lora": 8 * ((1462 + 1024) + (1024 + 512) + (512 + 64)) + heads,  # r (in + out)
        "full": full,
    }


def test_adapter_starts_as_the_pretrained_model():
    torch.manual_seed(1)
    base = SpectrumMLP(50, (32, 16), 2).eval()
    x = torch.randn(8, 50)
    with torch.no_grad():
        ref = base(x)
        m = build_transfer_model(base, "adapter", 8).eval()
        got = m(x)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_each_strategy_trains_only_its_parameters(transfer_run):
    pre = transfer_run["pretrained"]["model"]
    got = {s: load_candidate(p)[0].state_dict() for s, p in transfer_run["cands"].items()}
    meta = {s: load_candidate(p)[1] for s, p in transfer_run["cands"].items()}
    # zero-shot: every weight and buffer identical
    assert all(torch.equal(got["zeroshot"][k], v) for k, v in pre.items())
    assert meta["zeroshot"]["trainable_parameters"] == 0
    # adapter: the whole pretrained model (BatchNorm running statistics too) bit-identical
    assert all(torch.equal(got["adapter"][f"base.{k}"], v) for k, v in pre.items())
    assert not torch.equal(got["adapter"]["correction.2.weight"],
                           torch.zeros_like(got["adapter"]["correction.2.weight"]))
    assert meta["adapter"]["trainable_parameters"] == 16 * 33 + 17 * 8
    # LoRA: untargeted tensors identical; each targeted weight moved by a rank <= 4 update
    lora = got["lora"]
    for k, v in pre.items():
        if k.startswith("backbone.") and k.endswith(".weight") and v.dim() == 2:
            delta = (lora[k] - v).double()
            assert 0 < torch.linalg.matrix_rank(delta, atol=1e-6).item() <= 4, k
        elif k.startswith("backbone."):
            assert torch.equal(lora[k], v), k
        else:  # the output heads train in full
            assert not torch.equal(lora[k], v), k
    # full: every weight matrix moved
    assert all(not torch.equal(got["full"][k], v) for k, v in pre.items()
               if k.endswith("weight"))


def test_finetuning_learns_on_desi(transfer_run):
    meta = {s: load_candidate(p)[1] for s, p in transfer_run["cands"].items()}
    for s in ("adapter", "lora", "full"):
        assert meta[s]["val_loss"] < meta["zeroshot"]["val_loss"], (s, meta[s]["val_loss"])


def test_evaluate_writes_metrics_selection_and_routed_figures(transfer_run, tool_env):
    d = transfer_run["dir"]
    ev = d / "evaluation"
    ev.mkdir()
    run_specbridge(["evaluate", "--config", transfer_run["config"], "--checkpoints",
          *transfer_run["cands"].values(), "--spectra", transfer_run["index"]["desi"],
          "--metrics", ev / "metrics.ecsv", "--metrics-md", ev / "metrics.md",
          "--selection", ev / "selection.ecsv", "--summary", ev / "summary.ecsv",
          "--calibration", ev / "calibration.ecsv",
          "--predictions", ev / "predictions.h5"], tool_env)
    metrics = Table.read(ev / "metrics.ecsv")
    sel = Table.read(ev / "selection.ecsv")
    names = [f"mlp_{s}" for s in STRATEGIES]
    assert set(metrics["candidate"]) == {*names, "routed"}
    assert len(sel) == 8 and set(sel["candidate"]) <= set(names)
    # the selection follows the one-standard-error rule on its own validation metrics:
    # the overall best unless a regime's own best is better beyond the paired interval
    assert sel.meta["regime_basis"] == "router" and sel.meta["router"] == "mlp_zeroshot"
    again = select(metrics[metrics["candidate"] != "routed"], list(sel["label"][::2]), names)
    assert list(again["overall"]) == list(sel["overall"])
    assert list(again["regime_best"]) == list(sel["regime_best"])
    for r in sel:
        assert r["candidate"] == (r["regime_best"] if r["basis"] == "regime" else r["overall"])
        assert (r["basis"] == "regime") == (r["verdict"] == "yes" and r["val_n"] >= 50)
    for col in ("robust_sigma_lo", "robust_sigma_hi", "bias_lo", "bias_hi", "within_2sigma"):
        assert col in metrics.colnames
    ok = np.isfinite(metrics["robust_sigma_lo"])
    assert ok.any() and (metrics["robust_sigma_lo"][ok] <= metrics["robust_sigma_hi"][ok]).all()
    calib = Table.read(ev / "calibration.ecsv")
    assert len(calib) == 4 * len(names) and (calib["scale"] > 0).all()
    with h5py.File(ev / "predictions.h5") as h:
        n = h["specid"].shape[0]
        split = h["split"][()]
        assert set(np.unique(split)) == {1, 2}
        served = h["routed/served"][()]
        assert served.shape == (n, 4) and (served >= 0).all()
    # every labelled non-training DESI spectrum is evaluated
    rows = read_manifest(d / "desi.fits")
    assert n > 50 and n <= len(rows)
    text = (ev / "metrics.md").read_text()
    assert "## Answers (test split)" in text and "routing_beats_every_single" in text


def _metrics(sigmas: dict[tuple[str, str, str], float]) -> Table:
    rows = [(c, "val", lab, rg, "all", s, 100) for (c, lab, rg), s in sigmas.items()]
    return Table(rows=rows, names=("candidate", "split", "label", "regime", "snr_bin",
                                   "robust_sigma", "n"))


def test_selection_is_a_pure_function_of_validation_metrics():
    cands = ["mlp_zeroshot", "emb_mlp_full"]
    sig = {("mlp_zeroshot", "feh", "metal_poor"): 0.10, ("emb_mlp_full", "feh", "metal_poor"): 0.20,
           ("mlp_zeroshot", "feh", "metal_rich"): 0.08, ("emb_mlp_full", "feh", "metal_rich"): 0.05,
           ("mlp_zeroshot", "feh", "all"): 0.09, ("emb_mlp_full", "feh", "all"): 0.07}
    first = selection_mapping(select(_metrics(sig), ["feh"], cands))
    assert first == {("feh", "metal_poor"): "mlp_zeroshot", ("feh", "metal_rich"): "emb_mlp_full"}
    assert selection_mapping(select(_metrics(sig), ["feh"], cands)) == first  # deterministic
    sig[("emb_mlp_full", "feh", "metal_poor")] = 0.09
    sig[("emb_mlp_full", "feh", "metal_rich")] = 0.09
    assert selection_mapping(select(_metrics(sig), ["feh"], cands)) == {
        ("feh", "metal_poor"): "emb_mlp_full", ("feh", "metal_rich"): "mlp_zeroshot"}
    # a regime without validation stars falls back to the best over all stars
    sig[("mlp_zeroshot", "feh", "metal_poor")] = float("nan")
    sig[("emb_mlp_full", "feh", "metal_poor")] = float("nan")
    t = select(_metrics(sig), ["feh"], cands)
    assert t["candidate"][0] == "emb_mlp_full" and t["basis"][0] == "all"


def test_routing_hard_and_blended():
    labels = ["teff", "feh"]
    feh = np.array([-2.0, -1.05, -0.95, 0.0, np.nan])
    a = (np.column_stack([np.full(5, 5000.0), feh]), np.full((5, 2), 0.1))
    b = (np.column_stack([np.full(5, 6000.0), feh + 0.5]), np.full((5, 2), 0.2))
    preds = {"a": a, "b": b}
    sel = {("teff", "metal_poor"): "a", ("teff", "metal_rich"): "b",
           ("feh", "metal_poor"): "b", ("feh", "metal_rich"): "a"}
    r = route(preds, ["a", "b"], labels, sel, "a", -1.0)
    assert list(r.regime) == [METAL_POOR, METAL_POOR, METAL_RICH, METAL_RICH, NO_REGIME]
    np.testing.assert_array_equal(r.value[:4, 0], [5000, 5000, 6000, 6000])
    np.testing.assert_array_equal(r.value[:4, 1], feh[:4] + [0.5, 0.5, 0, 0])
    assert list(r.served[:4, 0]) == [0, 0, 1, 1]
    # row 4: no [Fe/H] from any candidate: each label takes the first finite value of its
    # metal-rich, then metal-poor selection (teff: b; feh: NaN everywhere)
    assert list(r.fallback) == [False] * 4 + [True]
    assert r.served[4].tolist() == [1, -1] and r.value[4, 0] == 6000.0
    assert np.isnan(r.value[4, 1])
    # blending over 0.2 dex: continuous across the threshold, hard outside the band
    r = route(preds, ["a", "b"], labels, sel, "a", -1.0, blend_width=0.2)
    np.testing.assert_allclose(r.value[:4, 0], [5000, 5250, 5750, 6000])
    # the blended error is the mixture's: it includes the spread between the candidates
    np.testing.assert_allclose(r.error[1, 0], np.sqrt(0.25 * 0.04 + 0.75 * 0.01
                                                      + 0.25 * 0.75 * 1000.0 ** 2))


def test_lora_on_the_specformer_trains_only_lora_and_the_head():
    from specbridge.models.specformer import SpecFormer
    from specbridge.models.transfer import SpecFormerRegressor, servable

    torch.manual_seed(3)
    sf = SpecFormer(200, 20, 10, 16, 2, 2)
    head = SpectrumMLP(16, (8,), 2)
    base = SpecFormerRegressor(sf, head, torch.zeros(16), torch.ones(16)).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    m = build_transfer_model(base, "lora", lora={**LORA, "rank": 2})
    # LoRA on attention, qkv (16 -> 48) and proj (16 -> 16), and the feed-forward, fc1
    # (16 -> 64) and fc2 (64 -> 16), of 2 layers; the head in full
    head_params = sum(p.numel() for p in head.parameters())
    per_layer = (16 + 48) + (16 + 16) + (16 + 64) + (64 + 16)
    assert trainable_parameters(m) == 2 * 2 * per_layer + head_params
    x = torch.stack([1 + 0.1 * torch.randn(16, 200), torch.full((16, 200), 100.0)], 1)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for _ in range(3):
        mu, lv = m(x)
        loss = (mu ** 2).mean() + lv.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        ref = m(x)[0]
        net = servable(m)
        out = net(x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    after = net.state_dict()
    for k, v in before.items():
        moved = not torch.equal(after[k], v)
        targeted = k.startswith("specformer.blocks.") and k.rsplit(".", 2)[-2:] in (
            ["qkv", "weight"], ["proj", "weight"], ["fc1", "weight"], ["fc2", "weight"])
        buffer = "running_" in k or "num_batches" in k
        if k.startswith("head.") and not buffer:  # the head trains in full
            assert moved, k
        elif targeted:
            assert moved, k
        else:
            assert not moved, k


@pytest.mark.mpi
@pytest.mark.parametrize("strategy", ["adapter", "lora"])
def test_frozen_weights_stay_frozen_under_ddp(transfer_run, tmp_path, tool_env, mpiexec,
                                              strategy):
    """With 2 DDP ranks the BatchNorm layers are swapped for all-reducing ones: the frozen
    backbone (affine parameters and running statistics) must stay bit-identical."""
    import subprocess

    d = transfer_run["dir"]
    out = tmp_path / f"{strategy}.pt"
    r = subprocess.run([mpiexec, "-n", "2", "specbridge", "finetune", "--config",
                        str(transfer_run["config"]), "--model", "mlp", "--strategy", strategy,
                        "--pretrained", str(d / "pretrained.pt"), "--spectra",
                        str(transfer_run["index"]["desi"]), "--output", str(out)],
                       capture_output=True, text=True, env=tool_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s)" in r.stderr
    pre = transfer_run["pretrained"]["model"]
    got = load_candidate(out)[0].state_dict()
    prefix = "base." if strategy == "adapter" else ""
    for k, v in pre.items():
        if k.startswith("backbone.") and (strategy == "adapter" or ".1." in k or ".5." in k):
            assert torch.equal(got[prefix + k], v), k  # BatchNorm (and for adapter, all)
