"""Checkpoints: one layout read with ``weights_only=True``; a pickle that would run code is
refused without running it; every kind round-trips; files of the earlier layouts still load."""

from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import pytest
import torch

from specbridge.errors import UserError
from specbridge.models.checkpoint import (
    Checkpoint,
    build_model,
    load_checkpoint,
    load_model,
    mlp_arch,
    save_checkpoint,
)
from specbridge.models.transfer import (
    architecture,
    build_transfer_model,
    load_candidate,
    servable,
    specformer_architecture,
)

LABELS = ["teff", "feh"]
SF_ARCH = {"npix": 200, "patch_size": 20, "patch_stride": 10, "d_model": 16, "n_layers": 1,
           "n_heads": 2, "mask_fraction": 0.3, "mask_span": 40}


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _trained(net: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """``net`` with non-trivial BatchNorm statistics (one forward pass in training mode)."""
    torch.manual_seed(0)
    net.train()
    with torch.no_grad():
        net(*x) if isinstance(x, tuple) else net(x)
    return net.eval()


def _mlp(n_in: int = 50) -> torch.nn.Module:
    torch.manual_seed(1)
    return _trained(build_model("mlp", mlp_arch(n_in, [32, 16], len(LABELS), 0.1)),
                    torch.randn(64, n_in))


def _spectra(n: int = 8) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.stack([1 + 0.1 * torch.randn(n, 200), torch.full((n, 200), 100.0)], 1)


def _mlp_meta() -> dict:
    return {"labels": LABELS, "label_mean": np.array([5000.0, -0.3]),
            "label_std": np.array([600.0, 0.4]), "history": [{"epoch": 0, "val_loss": 1.0}],
            "best_epoch": 0}


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for u, v in zip(a(x), b(x), strict=True):
            assert torch.equal(u, v)


def _refused(path, marker=None) -> str:
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg
    assert marker is None or not marker.exists()
    return msg


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    for i, blob in enumerate([_Evil(marker), {"model": _Evil(marker), "extra": {}},
                              {"format": "specbridge-checkpoint", "meta": _Evil(marker)}]):
        torch.save(blob, tmp_path / f"evil{i}.pt")
        msg = _refused(tmp_path / f"evil{i}.pt", marker)
        assert "not a specbridge checkpoint" in msg and "system" in msg, msg
        with pytest.raises(UserError):
            load_candidate(tmp_path / f"evil{i}.pt")
        assert not marker.exists()


def test_a_pickle_that_would_run_code_is_refused_by_the_cli(tmp_path, tool_env):
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker), "extra": {"model": "mlp"}}, tmp_path / "evil.pt")
    (tmp_path / "c.yaml").write_text("seed: 0\n")
    r = subprocess.run(["specbridge", "finetune", "--config", str(tmp_path / "c.yaml"),
                        "--model", "mlp", "--strategy", "full", "--pretrained",
                        str(tmp_path / "evil.pt"), "--spectra", str(tmp_path / "none.h5"),
                        "--output", str(tmp_path / "o.pt")], capture_output=True, text=True,
                       env=tool_env, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a specbridge checkpoint" in r.stderr
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_unreadable_and_foreign_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty file" in _refused(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    _refused(tmp_path / "text.pt")
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    assert "unknown layout" in _refused(tmp_path / "other.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    assert "not a dictionary" in _refused(tmp_path / "tensor.pt")


def test_wrong_kind_names_what_was_found(tmp_path):
    save_checkpoint(tmp_path / "sf.pt", Checkpoint("specformer", SF_ARCH, {}, {}))
    with pytest.raises(UserError, match="holds model 'specformer', not 'mlp'"):
        load_checkpoint(tmp_path / "sf.pt", ("mlp",))
    with pytest.raises(UserError, match="not a fine-tuned candidate checkpoint"):
        load_candidate(tmp_path / "sf.pt")


def test_the_file_loads_with_weights_only_and_meta_is_plain(tmp_path):
    net = _mlp()
    save_checkpoint(tmp_path / "m.pt", Checkpoint("mlp", mlp_arch(50, [32, 16], 2, 0.1),
                                                  net.state_dict(), _mlp_meta()))
    blob = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert blob["format"] == "specbridge-checkpoint" and blob["kind"] == "mlp"
    assert blob["meta"]["label_mean"] == [5000.0, -0.3]
    assert {"specbridge_version", "created"} <= set(blob["meta"]["provenance"])


@pytest.mark.parametrize("kind", ["mlp", "emb_mlp"])
def test_mlp_round_trip(tmp_path, kind):
    net = _mlp()
    arch = mlp_arch(50, [32, 16], len(LABELS), 0.1)
    save_checkpoint(tmp_path / "m.pt", Checkpoint(kind, arch, net.state_dict(), _mlp_meta()))
    got, ck = load_model(tmp_path / "m.pt", (kind,))
    assert not got.training and ck.kind == kind and ck.arch == arch
    assert ck.meta["labels"] == LABELS and ck.meta["label_std"] == [600.0, 0.4]
    _same_outputs(net, got, torch.randn(8, 50))


def test_specformer_round_trip(tmp_path):
    torch.manual_seed(3)
    sf = build_model("specformer", SF_ARCH).eval()
    emb = np.linspace(-1, 1, 16, dtype=np.float32)
    save_checkpoint(tmp_path / "sf.pt", Checkpoint("specformer", SF_ARCH, sf.state_dict(),
                                                   {"embed_mean": emb, "embed_std": emb + 2}))
    got, ck = load_model(tmp_path / "sf.pt", ("specformer",))
    assert ck.arch == SF_ARCH
    np.testing.assert_array_equal(np.asarray(ck.meta["embed_mean"], np.float32), emb)
    x = _spectra()
    with torch.no_grad():
        assert torch.equal(sf.embed(x[:, 0], x[:, 1]), got.embed(x[:, 0], x[:, 1]))


@pytest.mark.parametrize("strategy", ["zeroshot", "adapter", "lora", "full"])
def test_candidate_round_trip(tmp_path, strategy):
    base = _mlp()
    head = {**mlp_arch(50, [32, 16], len(LABELS), 0.1), "labels": LABELS}
    lora = {"rank": 2, "alpha": 4, "target_modules": ["linear"]}
    torch.manual_seed(4)
    model = build_transfer_model(base, strategy, 8, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))
    net = servable(model).eval()
    meta = {"candidate": f"mlp_{strategy}", "model": "mlp", "strategy": strategy,
            "feature": "flux", **_mlp_meta()}
    save_checkpoint(tmp_path / "c.pt", Checkpoint("candidate", architecture(head, strategy, 8),
                                                  net.state_dict(), meta))
    got, meta_back = load_candidate(tmp_path / "c.pt")
    assert meta_back["candidate"] == f"mlp_{strategy}" and meta_back["feature"] == "flux"
    assert np.asarray(meta_back["label_mean"], np.float64).tolist() == [5000.0, -0.3]
    _same_outputs(net, got, torch.randn(8, 50))


def test_specformer_candidate_round_trip(tmp_path):
    from specbridge.models.transfer import SpecFormerRegressor

    torch.manual_seed(5)
    sf = build_model("specformer", SF_ARCH)
    head = _trained(build_model("emb_mlp", mlp_arch(16, [8], len(LABELS), 0.0)),
                    torch.randn(32, 16))
    net = SpecFormerRegressor(sf, head, torch.full((16,), 0.1), torch.full((16,), 2.0)).eval()
    arch = specformer_architecture(SF_ARCH, {**mlp_arch(16, [8], 2, 0.0), "labels": LABELS})
    save_checkpoint(tmp_path / "c.pt", Checkpoint("candidate", arch, net.state_dict(),
                                                  {"candidate": "specformer_lora"}))
    got, _ = load_candidate(tmp_path / "c.pt")
    _same_outputs(net, got, _spectra())


def test_resume_state_round_trips_under_weights_only(tmp_path):
    from specbridge.training import loop

    net = _mlp()
    s = loop.LoopSettings(3, 1e-2, 1e-4, schedule="cosine")
    opt = loop.make_optimizer(net.parameters(), s)
    sched = loop.make_scheduler(opt, s)
    net.train()
    net(torch.randn(16, 50))[0].sum().backward()
    opt.step()
    sched.step()
    state = loop.LoopState(1, 0.5, 0, 0, [{"epoch": 0, "val_loss": 0.5}])
    loop.save_checkpoint(tmp_path / "last.pt", net, opt, sched, state,
                         {"resume_key": "abc", "mean": np.ones(2)})
    ck = load_checkpoint(tmp_path / "last.pt", ("resume",))
    assert ck.meta["resume_key"] == "abc" and ck.meta["mean"] == [1.0, 1.0]
    assert loop.LoopState(**ck.training["state"]) == state
    opt2 = loop.make_optimizer(net.parameters(), s)
    opt2.load_state_dict(ck.training["optimizer"])
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    sched2 = loop.make_scheduler(opt2, s)
    sched2.load_state_dict(ck.training["scheduler"])
    assert sched2.state_dict() == sched.state_dict()


def test_legacy_pretrained_layouts_still_load(tmp_path):
    net = _mlp()
    extra = {"labels": LABELS, "label_mean": np.array([5000.0, -0.3]),
             "label_std": np.array([600.0, 0.4]), "model": "mlp", "hidden": [32, 16],
             "dropout": 0.1, "npix": 50}
    torch.save({"model": net.state_dict(), "extra": extra, "history": [{"val_loss": 1.0}],
                "val_robust_sigma": {"teff": np.float64(80.0)}, "best_epoch": 3},
               tmp_path / "old.pt")
    got, ck = load_model(tmp_path / "old.pt", ("mlp",))
    assert ck.arch == mlp_arch(50, [32, 16], 2, 0.1)
    assert ck.meta["label_mean"] == [5000.0, -0.3] and ck.meta["best_epoch"] == 3
    assert ck.meta["history"] == [{"val_loss": 1.0}]
    assert ck.meta["val_robust_sigma"] == {"teff": 80.0}
    _same_outputs(net, got, torch.randn(8, 50))

    torch.manual_seed(6)
    sf = build_model("specformer", SF_ARCH).eval()
    emb = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    torch.save({"model": sf.state_dict(), "extra": {"model": "specformer", **SF_ARCH,
                                                    "embed_mean": emb, "embed_std": emb},
                "history": [], "val_loss": 0.3, "best_epoch": 0}, tmp_path / "old_sf.pt")
    got, ck = load_model(tmp_path / "old_sf.pt", ("specformer",))
    assert ck.arch == SF_ARCH and ck.meta["val_loss"] == 0.3
    np.testing.assert_array_equal(np.asarray(ck.meta["embed_std"], np.float32), emb)
    x = _spectra()
    with torch.no_grad():
        assert torch.equal(sf.embed(x[:, 0], x[:, 1]), got.embed(x[:, 0], x[:, 1]))


def test_legacy_candidate_and_resume_layouts_still_load(tmp_path):
    base = _mlp()
    torch.manual_seed(7)
    net = servable(build_transfer_model(base, "adapter", 8)).eval()
    head = {**mlp_arch(50, [32, 16], 2, 0.1), "labels": LABELS}
    torch.save({"candidate": "mlp_adapter", "model": "mlp", "strategy": "adapter",
                "arch": architecture(head, "adapter", 8), "state_dict": net.state_dict(),
                "labels": LABELS, "label_mean": np.array([5000.0, -0.3]),
                "label_std": np.array([600.0, 0.4]), "feature": "flux",
                "trainable_parameters": 100, "lora": None}, tmp_path / "old_c.pt")
    got, meta = load_candidate(tmp_path / "old_c.pt")
    assert meta["candidate"] == "mlp_adapter" and meta["label_std"] == [600.0, 0.4]
    assert meta["arch"]["adapter_width"] == 8 and meta["trainable_parameters"] == 100
    _same_outputs(net, got, torch.randn(8, 50))

    base = _mlp().train()
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3)
    base(torch.randn(16, 50))[0].sum().backward()
    opt.step()
    torch.save({"model": base.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": {"last_epoch": 1}, "state": {"epoch": 1, "best_val": 0.4,
                                                         "best_epoch": 0, "bad_epochs": 0,
                                                         "history": []},
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                "extra": {"resume_key": "k", "label_mean": np.ones(2)}}, tmp_path / "last.pt")
    ck = load_checkpoint(tmp_path / "last.pt", ("resume",))
    assert ck.meta["resume_key"] == "k" and ck.training["state"]["epoch"] == 1
    torch.optim.AdamW(base.parameters(), lr=1e-3).load_state_dict(ck.training["optimizer"])
