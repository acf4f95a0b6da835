"""Killed jobs resume: a preprocessing rank, an inference rank and a training process are
SIGKILLed mid-way (SPECBRIDGE_FAULT, specbridge.faults); the rerun completes and its outputs
equal those of an uninterrupted run."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest
import torch
import yaml

from specbridge.io.manifest import build_manifest, write_manifest
from specbridge.io.shards import read_index
from specbridge.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.mpi


def _run(cmd, env, fault=None, ok=True):
    env = {**env, **({"SPECBRIDGE_FAULT": fault} if fault else {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _same_shards(a_index, b_index, fields):
    a, b = read_index(a_index), read_index(b_index)
    assert [s["n"] for s in a] == [s["n"] for s in b]
    for sa, sb in zip(a, b, strict=True):
        with h5py.File(sa["path"]) as ha, h5py.File(sb["path"]) as hb:
            for f in fields:
                np.testing.assert_array_equal(ha[f][()], hb[f][()], err_msg=f)


def test_preprocess_rank_killed_then_rerun(small_mock, tmp_path, tool_env, mpiexec):
    rows = build_manifest("lamost", small_mock["lamost"][:240])
    write_manifest(tmp_path / "m.fits", rows)

    def cmd(out):
        return [mpiexec, "-n", "2", "specbridge", "preprocess", "--manifest",
                str(tmp_path / "m.fits"), "--output", str(tmp_path / out / "index.h5"),
                "--spectra-per-shard", "30"]

    _run(cmd("ref"), tool_env)
    r = _run(cmd("killed"), tool_env, fault="preprocess:1:1", ok=False)
    assert r.returncode != 0
    assert not (tmp_path / "killed" / "index.h5").exists()
    done = list((tmp_path / "killed" / "shards").glob("shard-*.h5"))
    assert 1 <= len(done) < 8
    r = _run(cmd("killed"), tool_env)
    assert "skipped as complete" in r.stderr and "(0 skipped" not in r.stderr
    _same_shards(tmp_path / "ref" / "index.h5", tmp_path / "killed" / "index.h5",
                 ("flux", "ivar", "mask", "specid", "flags", "manifest_row"))


def test_inference_rank_killed_then_rerun(transfer_run, tmp_path, tool_env, mpiexec):
    d = transfer_run["dir"]
    cands = [str(p) for p in transfer_run["cands"].values()]
    ev = tmp_path / "ev"
    _run(["specbridge", "evaluate", "--config", str(transfer_run["config"]), "--checkpoints",
          *cands, "--spectra", str(transfer_run["index"]["desi"]), "--metrics",
          str(ev / "m.ecsv"), "--metrics-md", str(ev / "m.md"), "--selection",
          str(ev / "s.ecsv"), "--summary", str(ev / "sum.ecsv"), "--predictions",
          str(ev / "p.h5")], tool_env)

    def cmd(out):
        return [mpiexec, "-n", "2", "specbridge", "infer", "--config",
                str(d / "config.yaml"), "--checkpoints", *cands, "--selection",
                str(ev / "s.ecsv"), "--spectra", str(transfer_run["index"]["desi"]),
                "--output", str(tmp_path / out / "index.h5")]

    _run(cmd("ref"), tool_env)
    r = _run(cmd("killed"), tool_env, fault="infer:0:1", ok=False)
    assert r.returncode != 0 and not (tmp_path / "killed" / "index.h5").exists()
    r = _run(cmd("killed"), tool_env)
    assert "skipped as complete" in r.stderr and "(0 skipped" not in r.stderr
    _same_shards(tmp_path / "ref" / "index.h5", tmp_path / "killed" / "index.h5",
                 ("value", "error", "regime", "served", "candidate_value", "flags"))


def test_training_killed_mid_epoch_then_resumed(transfer_run, tmp_path, tool_env):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"mlp": {"hidden": [64, 32], "dropout": 0.1}},
        "training": {"batch_size": 32, "epochs": 4, "lr": 1e-3, "val_fraction": 0.15}}))

    def cmd(out):
        return ["specbridge", "pretrain", "--config", str(cfg), "--model", "mlp", "--spectra",
                str(transfer_run["index"]["lamost"]), "--output", str(tmp_path / out)]

    _run(cmd("ref.pt"), tool_env)
    # ~10 batches per epoch: batch 15 is in the middle of the second epoch
    r = _run(cmd("killed.pt"), tool_env, fault="train:0:15", ok=False)
    assert r.returncode != 0 and not (tmp_path / "killed.pt").exists()
    r = _run(cmd("killed.pt"), tool_env)
    assert "resumed from" in r.stderr and "after epoch 1" in r.stderr
    a = load_checkpoint(tmp_path / "ref.pt")
    b = load_checkpoint(tmp_path / "killed.pt")
    assert [h["val_loss"] for h in a.meta["history"]] == [h["val_loss"]
                                                          for h in b.meta["history"]]
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    assert a.meta["val_robust_sigma"] == b.meta["val_robust_sigma"]


def test_stale_checkpoint_from_other_settings_is_not_resumed(transfer_run, tmp_path, tool_env):
    """A rerun after a config change (here the learning rate) starts afresh instead of resuming
    (or crashing on) the previous settings' last.pt."""
    def cmd(lr):
        cfg = tmp_path / f"c{lr}.yaml"
        cfg.write_text(yaml.safe_dump({
            "models": {"mlp": {"hidden": [32], "dropout": 0.0}},
            "training": {"batch_size": 32, "epochs": 2, "lr": lr, "val_fraction": 0.15}}))
        return ["specbridge", "pretrain", "--config", str(cfg), "--model", "mlp", "--spectra",
                str(transfer_run["index"]["lamost"]), "--output", str(tmp_path / "m.pt")]

    _run(cmd(1e-3), tool_env)
    r = _run(cmd(2e-3), tool_env)
    assert "ignoring" in r.stderr and "resumed from" not in r.stderr
    r = _run(cmd(2e-3), tool_env)  # same settings again: resumes (nothing left to train)
    assert "resumed from" in r.stderr


def test_rerun_on_changed_inputs_starts_afresh(transfer_run, tmp_path, tool_env):
    """A rule rerun because an input changed (here: the pretrained checkpoint under
    fine-tuning, retrained with the same architecture, data and labels) must not resume the
    old input's finished last.pt, which would silently serve weights trained from the old
    one."""
    lamost, desi = (str(transfer_run["index"][s]) for s in ("lamost", "desi"))

    def config(lr):
        cfg = tmp_path / f"c{lr}.yaml"
        cfg.write_text(yaml.safe_dump({
            "models": {"mlp": {"hidden": [32], "dropout": 0.0}},
            "training": {"batch_size": 32, "epochs": 2, "lr": lr, "val_fraction": 0.15},
            "finetune": {"models": ["mlp"], "epochs": 2, "val_fraction": 0.25,
                         "test_fraction": 0.25}}))
        return str(cfg)

    for name, lr in (("p.pt", 1e-3), ("q.pt", 3e-3)):
        _run(["specbridge", "pretrain", "--config", config(lr), "--model", "mlp",
              "--spectra", lamost, "--output", str(tmp_path / name)], tool_env)

    def finetune(pretrained):
        return _run(["specbridge", "finetune", "--config", config(1e-3), "--model", "mlp",
                     "--strategy", "full", "--pretrained", str(tmp_path / pretrained),
                     "--spectra", desi, "--output", str(tmp_path / "ft.pt")], tool_env)

    finetune("p.pt")
    assert "resumed from" in finetune("p.pt").stderr  # same inputs: resumes
    r = finetune("q.pt")
    assert "ignoring" in r.stderr and "resumed from" not in r.stderr
