"""Stages declare the config sections they read; they see only those, and the workflow's rerun
trigger of each rule is derived from the same declaration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from specbridge.config import SCHEMA_PATH
from specbridge.stages import STAGES, config_sections, declared, stage_module

REPO = Path(__file__).resolve().parents[1]


def test_declared_sections_exist_in_the_schema():
    top = set(yaml.safe_load(Path(SCHEMA_PATH).read_text())["properties"])
    for stage in STAGES:
        assert set(config_sections(stage)) <= top, stage


def test_a_stage_cannot_read_an_undeclared_section():
    cfg = {"grid": {"npix": 3}, "preprocess": {}, "evaluation": {"feh_threshold": -1.0}}
    view = declared(cfg, ("grid", "preprocess"))
    assert view["grid"]["npix"] == 3
    with pytest.raises(KeyError):
        view["evaluation"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_section_a_stage_module_reads_is_declared(stage):
    """A static guard beside the runtime one: every ``cfg["section"]`` in the stage's source."""
    text = Path(stage_module(stage).__file__).read_text()
    read = set(re.findall(r'\bcfg\["([a-z_]+)"\]', text))
    undeclared = read - set(config_sections(stage))
    assert not undeclared, f"{stage} reads {undeclared}"


def test_every_stage_rule_takes_its_settings_from_the_stage():
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    used = set(re.findall(r'stage_settings\("([a-z_]+)"\)', text))
    assert used == set(STAGES)
    assert "section_digest" not in text


def test_validate_real_declares_what_preprocessing_reads():
    assert set(config_sections("preprocess")) <= set(config_sections("validate_real"))
    assert "evaluation" in config_sections("validate_real")
