"""``specbridge manifest``: arguments of :mod:`specbridge.stages.manifest`."""

from __future__ import annotations

import argparse

from specbridge.cli._common import CLIError, add_config_argument, mpi_stage_config


def run(args: argparse.Namespace) -> int:
    from specbridge.stages import manifest

    columns = None
    if args.label_columns:
        try:
            columns = dict(kv.split("=", 1) for kv in args.label_columns.split(","))
        except ValueError:
            raise CLIError(f"--label-columns {args.label_columns!r}: expected KEY=COL,...") \
                from None
    inputs = {"files": args.files, "files_from": args.files_from, "labels": args.labels,
              "redshifts": args.redshifts, "redshifts_from": args.redshifts_from}
    comm, cfg = mpi_stage_config(args)
    return manifest.run(cfg, inputs, {"manifest": args.output}, comm,
                        survey=args.survey, label_format=args.label_format,
                        label_columns=columns)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="one row per input spectrum, cross-matched to labels",
                       description="Scan survey files (DESI coadd/spectra, LAMOST LRS in both "
                                   "layouts), record every spectrum with IDs, position, "
                                   "redshift, S/N, target bits, reference labels and flag bits; "
                                   "flag what the target selection (config selection) leaves "
                                   "out. Unreadable or bad input is recorded with a reason, "
                                   "never dropped. Run under mpiexec/srun for several ranks: "
                                   "the files are spread over them, one manifest is written.")
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
    p.add_argument("--redshifts", action="append", metavar="GLOB",
                   help="a DESI redrock file or glob (repeat the option for several; "
                        "default: config data.desi.redshift_files)")
    p.add_argument("--redshifts-from", metavar="LIST",
                   help="text file listing DESI redrock files, one per line")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="input files or globs (default: --files-from, else config)")
    p.set_defaults(func=run)
