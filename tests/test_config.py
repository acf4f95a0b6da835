"""The configuration: schema defaults, one-line errors naming the key, in the CLI and Snakefile."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from specbridge.config import ConfigError, config_hash, load_config, validate_config


def test_default_config_is_valid_and_complete(repo):
    cfg = load_config(repo / "config.yaml")
    assert cfg["grid"] == {"log10_lambda_start": 3.602, "log10_lambda_step": 1e-4, "npix": 1462}
    assert cfg["labels"] == ["teff", "logg", "feh", "alpha_fe"]
    assert cfg["evaluation"]["feh_threshold"] == -1.0


def test_mock_survey_effects_are_on_by_default():
    """Every survey effect of the mock is on in the schema's default (docs/mock.md)."""
    from specbridge.mock.effects import EFFECT_NAMES, SurveyEffects

    mock = validate_config({})["data"]["mock"]
    eff = SurveyEffects.from_mock(mock)
    assert all(eff.on(name) for name in EFFECT_NAMES)
    assert mock["binaries"]["fraction"] == 0.15 and mock["extinction"]["r_v"] == 3.1


def test_empty_config_gets_paper_defaults():
    cfg = validate_config({})
    # docs/design.md: AdamW, lr 1e-5, weight decay 1e-4, batch 32, 100 epochs; MLP 1024-512-64
    assert cfg["training"]["optimizer"] == "adamw"
    assert cfg["training"]["lr"] == 1e-5
    assert cfg["training"]["batch_size"] == 32
    assert cfg["training"]["epochs"] == 100
    assert cfg["models"]["mlp"]["hidden"] == [1024, 512, 64]
    assert cfg["models"]["specformer"]["d_model"] == 768
    assert cfg["models"]["specformer"]["n_layers"] == 6


@pytest.mark.parametrize("size", ["benchmark", "paper"])
def test_size_ladder_overlays_are_valid(repo, size):
    """config/sizes/<size>.yaml on top of the embedded default gives a valid config whose
    SpecFormer training keys override the shared ones (and the rest is inherited)."""
    from specbridge.models import SpecFormer
    from specbridge.stages.pretrain import specformer_training

    overlay = yaml.safe_load((repo / "config" / "sizes" / f"{size}.yaml").read_text())
    cfg = load_config(repo / "config.yaml", overlay)
    sft = specformer_training(cfg["training"])
    assert sft["lr"] == overlay["training"]["specformer"]["lr"]
    assert sft["val_fraction"] == cfg["training"]["val_fraction"]
    sc = cfg["models"]["specformer"]
    n = sum(p.numel() for p in SpecFormer(1462, sc["patch_size"], sc["patch_stride"],
                                          sc["d_model"], sc["n_layers"], sc["n_heads"])
            .parameters())
    if size == "paper":
        assert 40e6 < n < 46e6  # ~43 M, SpecCLIP's LAMOST encoder


def test_specformer_snr_augment_overrides_key_by_key(repo):
    """training.specformer.snr_augment overrides single keys of training.snr_augment (an
    override of snr_min alone leaves the denoising on); without it the SpecFormer inherits."""
    from specbridge.stages.pretrain import specformer_training
    from specbridge.training.augment import augment_settings

    cfg = load_config(repo / "config.yaml")
    assert augment_settings(specformer_training(cfg["training"])) == (0.5, 3.0)
    cfg = load_config(repo / "config.yaml",
                      {"training": {"specformer": {"snr_augment": {"snr_min": 5.0}}}})
    assert augment_settings(specformer_training(cfg["training"])) == (0.5, 5.0)
    assert augment_settings(cfg["training"]) == (0.5, 3.0)
    cfg = load_config(repo / "config.yaml",
                      {"training": {"specformer": {"snr_augment": {"fraction": 0.0}}}})
    assert augment_settings(specformer_training(cfg["training"]))[0] == 0.0


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"preprocess": {"continuum": {"method": "spline"}}}, "preprocess.continuum.method",
         ["'envelope'", "'none'"]),
        ({"finetune": {"strategies": ["lora", "prompt"]}}, "finetune.strategies.1",
         ["'zeroshot'", "'adapter'", "'lora'", "'full'"]),
        ({"training": {"lr": -1.0}}, "training.lr", ["> 0"]),
        ({"training": {"epochs": "many"}}, "training.epochs", ["integer"]),
        ({"data": {"source": "archive"}}, "data.source", ["'mock'", "'files'"]),
        ({"data": {"mock": {"binaries": {"fraction": 1.5}}}}, "data.mock.binaries.fraction",
         ["1"]),
        ({"data": {"mock": {"extinction": {"rv": 3.1}}}}, "data.mock.extinction", ["'rv'"]),
    ],
)
def test_bad_value_names_key_and_allowed_values(repo, override, key, words):
    with pytest.raises(ConfigError) as exc:
        load_config(repo / "config.yaml", override)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"'{key}'" in msg
    for w in words:
        assert w in msg


def test_fixed_flux_scale_needs_continuum_normalised_flux(repo):
    over = {"models": {"specformer": {"flux_scale": 0.1}},
            "preprocess": {"continuum": {"method": "none"}}}
    with pytest.raises(ConfigError, match="'models.specformer.flux_scale' = 0.1 needs"):
        load_config(repo / "config.yaml", over)
    over["models"]["specformer"]["flux_scale"] = None
    assert load_config(repo / "config.yaml", over)["models"]["specformer"]["flux_scale"] is None


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch'\] under 'training'"):
        validate_config({"training": {"epoch": 3}})


def test_validation_does_not_mutate_and_hash_is_stable():
    raw = {"seed": 3}
    a = validate_config(raw)
    assert raw == {"seed": 3}
    assert config_hash(a) == config_hash(validate_config({"seed": 3}))
    assert config_hash(a) != config_hash(validate_config({"seed": 4}))


def test_cli_config_subcommand_reports_one_line(tmp_path, tool_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"inference": {"router": "cnn_full"}}))
    r = subprocess.run(["specbridge", "config", "--config", str(bad)], capture_output=True,
                       text=True, env=tool_env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "'inference.router'" in lines[0]


def test_snakemake_rejects_bad_config_with_one_line(repo, tmp_path, tool_env):
    r = subprocess.run(
        ["snakemake", "-n", "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(repo / "config.yaml"), "--config", "vac={'name': 'bad name!'}"],
        capture_output=True, text=True, env=tool_env)
    assert r.returncode != 0
    err = [ln for ln in (r.stdout + r.stderr).splitlines() if "invalid configuration" in ln]
    assert len(err) == 1, r.stdout + r.stderr
    assert "'vac.name'" in err[0]
    assert "Traceback" not in r.stdout + r.stderr
