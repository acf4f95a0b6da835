"""The datamodel pages stay in step with the code that writes the files."""

from __future__ import annotations

from specbridge import flags
from specbridge.io.manifest import COLUMNS


def test_flags_page_matches_definition(repo):
    page = (repo / "docs" / "datamodel" / "flags.md").read_text()
    assert flags.markdown_table() in page


def test_manifest_page_lists_every_column(repo):
    page = (repo / "docs" / "datamodel" / "manifest.md").read_text()
    for name, _, _unit, desc in COLUMNS:
        assert f"| `{name}` |" in page and desc in page, name


def test_flag_bits_are_unique():
    bits = [f.bit for f in flags.FLAG_BITS]
    assert len(bits) == len(set(bits))
    assert flags.names(flags.flag("NO_LABEL") | flags.flag("SKY_FIBER")) == ["SKY_FIBER",
                                                                          "NO_LABEL"]
    assert flags.is_fatal(flags.flag("SKY_FIBER")) and not flags.is_fatal(flags.flag("NO_LABEL"))


def test_vac_page_lists_every_column(repo):
    from specbridge.vac.catalogue import datamodel_markdown

    page = (repo / "docs" / "datamodel" / "vac.md").read_text()
    assert datamodel_markdown(["teff", "logg", "feh", "alpha_fe"], ["mlp_lora"]) in page


def test_every_output_has_a_datamodel_page(repo):
    pages = {p.stem for p in (repo / "docs" / "datamodel").glob("*.md")}
    assert {"manifest", "preprocessed", "flags", "evaluation", "predictions", "vac"} <= pages
