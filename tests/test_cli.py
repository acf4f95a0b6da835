"""Every subcommand answers --help; the package runs as `python -m specbridge`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specbridge.cli import build_parser

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_expected_subcommands():
    assert set(SUBCOMMANDS) >= {"mock", "manifest", "preprocess", "pretrain", "embed",
                                "finetune", "evaluate", "infer", "vac", "report",
                                "check-mpi", "check-ddp", "config"}


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help(sub, tool_env):
    r = subprocess.run([sys.executable, "-m", "specbridge", sub, "--help"],
                       capture_output=True, text=True, env=tool_env)
    assert r.returncode == 0, r.stderr
    assert f"usage: specbridge {sub}" in r.stdout
