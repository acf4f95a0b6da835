"""Stage logic as library code: one module per workflow stage.

Each stage module declares the top-level config sections it reads (``CONFIG_SECTIONS``) and has
a function ``run(cfg, inputs, outputs, comm=None, **options)``: ``inputs`` and ``outputs`` map
names to paths, ``comm`` is an MPI communicator or None. A stage sees only the sections it
declares (:func:`declared`), so reading an undeclared one fails at once instead of leaving a
stale output; the workflow derives each rule's rerun trigger from the same declaration
(:func:`config_sections`). Stages call each other as functions, never through argv.
Modules are imported lazily: importing this package (as the Snakefile does) loads no heavy
dependency.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

STAGES = ("mock", "manifest", "preprocess", "pretrain", "embed", "finetune", "evaluate",
          "infer", "vac", "report", "validate_real", "scoreboard")


def stage_module(stage: str):
    """The module ``specbridge.stages.<stage>``."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; one of {STAGES}")
    return importlib.import_module(f"specbridge.stages.{stage}")


def config_sections(stage: str) -> tuple[str, ...]:
    """The top-level config sections ``stage`` reads (its ``CONFIG_SECTIONS``), sorted."""
    return tuple(sorted(set(stage_module(stage).CONFIG_SECTIONS)))


def declared(cfg: Mapping[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """``cfg`` restricted to ``sections``: a stage given this view cannot read what it has not
    declared (KeyError at the first access)."""
    return {k: cfg[k] for k in sections if k in cfg}
