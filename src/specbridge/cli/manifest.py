"""``specbridge manifest``: scan survey files into the manifest (one row per input spectrum)."""

from __future__ import annotations

import argparse
import collections
import logging
import time
from pathlib import Path

from specbridge import flags
from specbridge.cli._common import CLIError, add_config_argument, config_from_args
from specbridge.io.labels import LabelTable, read_apogee_allstar, read_label_table
from specbridge.io.manifest import (
    GridRange,
    build_manifest,
    expand_globs,
    write_manifest,
)
from specbridge.progress import Progress

log = logging.getLogger("specbridge.manifest")


def load_labels(path: str | None, fmt: str, columns: dict[str, str]) -> LabelTable | None:
    """The label catalogue named in the config (or on the command line), or None."""
    if not path:
        return None
    if fmt == "apogee_allstar":
        return read_apogee_allstar(path)
    return read_label_table(path, columns)


def _read_list(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise CLIError(f"cannot read file list {path}: {exc.strerror}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    data = cfg["data"]
    if args.files:
        files = expand_globs(args.files)
    elif args.files_from:
        files = _read_list(args.files_from)
    else:
        files = expand_globs(data[args.survey]["files"])
    if not files:
        log.warning("no %s files given (config data.%s.files is empty)", args.survey, args.survey)
    redshift_files = []
    if args.survey == "desi":
        if args.redshifts_from:
            redshift_files = _read_list(args.redshifts_from)
        else:
            redshift_files = expand_globs(args.redshifts or data["desi"]["redshift_files"])
    label_cfg = data["labels"]
    columns = label_cfg["columns"]
    if args.label_columns:
        try:
            columns = dict(kv.split("=", 1) for kv in args.label_columns.split(","))
        except ValueError:
            raise CLIError(f"--label-columns {args.label_columns!r}: expected KEY=COL,...") \
                from None
    labels = load_labels(args.labels or label_cfg["catalogue"],
                         args.label_format or label_cfg["format"], columns)
    t0 = time.monotonic()
    rows = build_manifest(args.survey, files, labels=labels, redshift_files=redshift_files,
                          grid=GridRange.from_config(cfg["grid"]),
                          radius_arcsec=data["crossmatch"]["radius_arcsec"],
                          progress=Progress(f"manifest {args.survey}", log, unit="files"))
    dt = time.monotonic() - t0
    write_manifest(args.output, rows, {"SURVEY": args.survey,
                                       "LABELS": str(labels.source) if labels else ""})
    counts = collections.Counter(n for v in rows["FLAGS"] for n in flags.names(int(v)))
    nfatal = int(flags.is_fatal(rows["FLAGS"]).sum())
    log.info("%d files -> %d spectra in %.1f s (%.0f files/s); %d usable, %d with a fatal flag",
             len(files), rows.size, dt, len(files) / max(dt, 1e-9), rows.size - nfatal, nfatal)
    for name, n in sorted(counts.items()):
        log.info("  flag %-18s %d", name, n)
    log.info("wrote %s", args.output)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="one row per input spectrum, cross-matched to labels",
                       description="Scan survey files (DESI coadd/spectra, LAMOST LRS in both "
                                   "layouts), record every spectrum with IDs, position, "
                                   "redshift, S/N, reference labels and flag bits. Unreadable "
                                   "or bad input is recorded with a reason, never dropped.")
    add_config_argument(p)
    p.add_argument("--survey", required=True, choices=["lamost", "desi"])
    p.add_argument("--output", required=True, help="manifest FITS file to write")
    p.add_argument("--files-from", metavar="LIST",
                   help="text file with one input path per line (instead of config globs)")
    p.add_argument("--labels", metavar="PATH",
                   help="label catalogue (default: config data.labels.catalogue)")
    p.add_argument("--label-format", choices=["apogee_allstar", "table"],
                   help="format of --labels (default: config data.labels.format)")
    p.add_argument("--label-columns", metavar="KEY=COL,...",
                   help="column mapping of a table-format --labels, e.g. "
                        "teff=teffin,logg=loggin,feh=fehin,file=file_name "
                        "(default: config data.labels.columns)")
    p.add_argument("--redshifts", nargs="+", metavar="GLOB",
                   help="DESI redrock files (default: config data.desi.redshift_files)")
    p.add_argument("--redshifts-from", metavar="LIST",
                   help="text file listing DESI redrock files, one per line")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="input files or globs (default: --files-from, else config)")
    p.set_defaults(func=run)
