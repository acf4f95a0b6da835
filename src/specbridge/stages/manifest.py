"""The manifest: survey files scanned into one row per input spectrum, cross-matched to the
label catalogue, every bad input recorded with a flag and a reason."""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

from specbridge import flags
from specbridge.errors import UserError, describe
from specbridge.io.labels import LabelTable, read_apogee_allstar, read_label_table
from specbridge.io.manifest import GridRange, build_manifest, expand_globs, write_manifest
from specbridge.progress import Progress
from specbridge.stages import declared

CONFIG_SECTIONS = ("data", "grid")
log = logging.getLogger("specbridge.manifest")


def load_labels(path: str | None, fmt: str, columns: dict[str, str]) -> LabelTable | None:
    """The label catalogue at ``path`` (format 'apogee_allstar' or 'table' with the column
    mapping ``columns``), or None without a path."""
    if not path:
        return None
    if fmt == "apogee_allstar":
        return read_apogee_allstar(path)
    return read_label_table(path, columns)


def read_file_list(path: str | Path) -> list[str]:
    """Paths listed one per line in ``path`` (blank lines and '#' comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read file list {path}: {describe(exc)}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def input_files(cfg: dict[str, Any], survey: str, inputs: dict[str, Any]) -> tuple[list[str],
                                                                                 list[str]]:
    """(spectrum files, redrock files) from ``inputs`` ('files': paths or globs, or
    'files_from': a list file; 'redshifts' globs or 'redshifts_from'), else the config."""
    data = cfg["data"]
    if inputs.get("files"):
        files = expand_globs(inputs["files"])
    elif inputs.get("files_from"):
        files = read_file_list(inputs["files_from"])
    else:
        files = expand_globs(data[survey]["files"])
    redshift_files: list[str] = []
    if survey == "desi":
        if inputs.get("redshifts_from"):
            redshift_files = read_file_list(inputs["redshifts_from"])
        else:
            redshift_files = expand_globs(inputs.get("redshifts")
                                          or data["desi"]["redshift_files"])
    return files, redshift_files


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, survey: str, label_format: str | None = None,
        label_columns: dict[str, str] | None = None) -> int:
    """Scan the ``survey`` files of ``inputs`` (see :func:`input_files`), cross-match them to
    the label catalogue ``inputs['labels']`` (default: the config's) and write the manifest
    FITS ``outputs['manifest']``."""
    cfg = declared(cfg, CONFIG_SECTIONS)
    files, redshift_files = input_files(cfg, survey, inputs)
    if not files:
        log.warning("no %s files given (config data.%s.files is empty)", survey, survey)
    label_cfg = cfg["data"]["labels"]
    labels = load_labels(inputs.get("labels") or label_cfg["catalogue"],
                         label_format or label_cfg["format"],
                         label_columns or label_cfg["columns"])
    t0 = time.monotonic()
    rows = build_manifest(survey, files, labels=labels, redshift_files=redshift_files,
                          grid=GridRange.from_config(cfg["grid"]),
                          radius_arcsec=cfg["data"]["crossmatch"]["radius_arcsec"],
                          progress=Progress(f"manifest {survey}", log, unit="files"))
    dt = time.monotonic() - t0
    write_manifest(outputs["manifest"], rows, {"SURVEY": survey,
                                               "LABELS": str(labels.source) if labels else ""})
    counts = collections.Counter(n for v in rows["FLAGS"] for n in flags.names(int(v)))
    nfatal = int(flags.is_fatal(rows["FLAGS"]).sum())
    log.info("%d files -> %d spectra in %.1f s (%.0f files/s); %d usable, %d with a fatal flag",
             len(files), rows.size, dt, len(files) / max(dt, 1e-9), rows.size - nfatal, nfatal)
    for name, n in sorted(counts.items()):
        log.info("  flag %-18s %d", name, n)
    log.info("wrote %s", outputs["manifest"])
    return 0
