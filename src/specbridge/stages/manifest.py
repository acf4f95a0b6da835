"""The manifest: survey files scanned into one row per input spectrum, cross-matched to the
label catalogue, every bad input recorded with a flag and a reason, the target selection
flagged. One MPI job in the desispec manner: rank 0 resolves the inputs and broadcasts them,
the files are spread over the ranks, rank 0 gathers the rows (compact, in bounded messages)
and writes the one manifest."""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

from specbridge import flags
from specbridge.errors import UserError, describe
from specbridge.io import desi
from specbridge.io.labels import LabelTable, read_apogee_allstar, read_label_table
from specbridge.io.manifest import (
    COMPACT_DTYPE,
    GridRange,
    compact_part,
    expand_globs,
    finish_compact,
    scan_file,
    write_manifest,
)
from specbridge.io.selection import Selection
from specbridge.parallel.executor import map_gather_rows
from specbridge.parallel.mpi import bcast_from_rank0, comm_rank_size, rank0_logger, run_or_abort
from specbridge.stages import declared

CONFIG_SECTIONS = ("data", "grid", "selection")


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


def file_weights(survey: str, files: list[str]) -> list[float]:
    """Cost of scanning each file, for spreading them over ranks: 1 per LAMOST file (one
    spectrum each); for DESI the size in MB + 1 (a coadd holds up to 500 spectra), 1 for a
    file that cannot be stat'ed."""
    if survey != "desi":
        return [1.0] * len(files)
    out = []
    for f in files:
        try:
            out.append(os.path.getsize(f) / 1e6 + 1.0)
        except OSError:
            out.append(1.0)
    return out


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, survey: str, label_format: str | None = None,
        label_columns: dict[str, str] | None = None) -> int:
    """Scan the ``survey`` files of ``inputs`` (see :func:`input_files`), flag the target
    selection (config ``selection``), cross-match to the label catalogue ``inputs['labels']``
    (default: the config's) and write the manifest FITS ``outputs['manifest']``.

    ``comm``: MPI communicator or None. Under several ranks the files are spread over them
    (:func:`specbridge.parallel.executor.map_gather_rows`), each rank flags the target
    selection of its files' rows and keeps them compact (:func:`compact_part`, ~380 bytes a
    row); rank 0 gathers the rows in input order in bounded messages, does what needs every
    row at once (duplicates, cross-match, star keys) and writes the one manifest in blocks,
    identical row for row to a one-process run."""
    cfg = declared(cfg, CONFIG_SECTIONS)
    log = rank0_logger("specbridge.manifest", comm)
    rank, size = comm_rank_size(comm)
    t0 = time.monotonic()

    def resolve() -> tuple[list[str], list[str], list[float]]:  # globs and stats: rank 0 only
        files, redshift_files = input_files(cfg, survey, inputs)
        return files, redshift_files, file_weights(survey, files)

    files, redshift_files, weights = bcast_from_rank0(comm, resolve)
    if not files and rank == 0:
        log.warning("no %s files given (config data.%s.files is empty)", survey, survey)
    label_cfg = cfg["data"]["labels"]
    held: dict[str, LabelTable | None] = {}

    def labels_on_rank0() -> None:  # read once, kept on rank 0: only it cross-matches
        held["labels"] = load_labels(inputs.get("labels") or label_cfg["catalogue"],
                                     label_format or label_cfg["format"],
                                     label_columns or label_cfg["columns"])

    bcast_from_rank0(comm, labels_on_rank0)
    selection = bcast_from_rank0(comm, lambda: Selection.from_config(cfg["selection"]))
    zlookup = bcast_from_rank0(comm, lambda: desi.redshift_lookup(redshift_files)
                               if redshift_files else None)
    return run_or_abort(comm, log, _scan_and_write, cfg, survey, files, weights, zlookup,
                        held.get("labels"), selection, outputs, comm, log, t0)


def _scan_and_write(cfg: dict[str, Any], survey: str, files: list[str], weights: list[float],
                    zlookup: dict[int, tuple[float, float, int, str]] | None,
                    labels: LabelTable | None, selection: Selection,
                    outputs: dict[str, Any], comm: Any, log: logging.Logger,
                    t0: float) -> int:
    """Every rank scans its files; rank 0 finishes and writes the manifest (see :func:`run`)."""
    rank, size = comm_rank_size(comm)
    grid = GridRange.from_config(cfg["grid"])
    log.info("%d %s files over %d rank(s)", len(files), survey, size)
    t_scan = time.monotonic()
    gathered = map_gather_rows(
        f"manifest {survey}", files,
        lambda path: compact_part(survey, scan_file(survey, path, zlookup, grid), selection),
        COMPACT_DTYPE, comm, log, weights=weights, unit="files")
    dt_scan = time.monotonic() - t_scan
    peak_scan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if rank != 0:
        comm.gather(peak_scan, root=0)
        return 0
    manifest = finish_compact(survey, files, *gathered, labels,
                              cfg["data"]["crossmatch"]["radius_arcsec"])
    del gathered
    write_manifest(outputs["manifest"], manifest,
                   {"SURVEY": survey, "LABELS": str(labels.source) if labels else ""})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peaks = comm.gather(peak_mb, root=0) if comm is not None else [peak_mb]
    rows = manifest.rows
    dt = time.monotonic() - t0
    counts = {k: n for k, n in flags.counts(rows["FLAGS"]).items() if n}
    nfatal = int(flags.is_fatal(rows["FLAGS"]).sum())
    nsel = counts.get("NOT_SELECTED", 0)
    log.info("%d files -> %d spectra in %.1f s (scan %.1f s: %.0f files/s, %.0f files/s per "
             "rank over %d rank(s)); %d usable, %d with a fatal flag (%d not selected)",
             len(files), rows.size, dt, dt_scan, len(files) / max(dt_scan, 1e-9),
             len(files) / max(dt_scan, 1e-9) / size, size, rows.size - nfatal, nfatal, nsel)
    log.info("peak memory per rank: %s MB (%.0f bytes a row held on rank 0)",
             ", ".join(f"{p:.0f}" for p in peaks), rows.itemsize + 4)
    for name, n in sorted(counts.items()):
        log.info("  flag %-18s %d", name, n)
    log.info("wrote %s", outputs["manifest"])
    return 0
