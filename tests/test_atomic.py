"""Atomic outputs: a failed write leaves neither the final file nor a temporary one."""

from __future__ import annotations

import json

import pytest

from specbridge.atomic import atomic_output, write_json_atomic


def test_atomic_output_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "x.fits"
    with atomic_output(target) as tmp:
        assert tmp.suffix == ".fits" and tmp.parent == target.parent
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"

    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"data"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.fits"]


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": 1}
