"""``specbridge validate-real``: a set of real, labelled LAMOST spectra (config
``real_validation``) through the same reader, manifest and preprocessing as the survey, then
the LAMOST-pretrained spectrum MLP; predictions next to the reference labels, whatever they
show."""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.cli._common import CLIError, add_config_argument, config_from_args

log = logging.getLogger("specbridge.validate_real")


def real_set(cfg: dict, name: str) -> dict:
    """The named entry of ``real_validation`` with ``{reference_data}`` filled in and its
    file globs expanded (key 'paths')."""
    for s in cfg["real_validation"]:
        if s["name"] == name:
            ref = str(cfg["reference_data"])
            out = {**s, "labels": s["labels"].replace("{reference_data}", ref)}
            out["paths"] = sorted(p for g in s["files"]
                                  for p in glob.glob(g.replace("{reference_data}", ref)))
            return out
    raise CLIError(f"no real_validation set named {name!r} in the config")


def run(args: argparse.Namespace) -> int:
    import torch
    from astropy.table import Table

    from specbridge.cli import preprocess
    from specbridge.evaluation.metrics import residual_metrics
    from specbridge.inference.predict import Candidate, predict, read_inputs
    from specbridge.io.labels import read_label_table
    from specbridge.io.manifest import build_manifest, write_manifest
    from specbridge.io.shards import LABEL_NAMES, read_index
    from specbridge.models import SpectrumMLP

    cfg = config_from_args(args)
    s = real_set(cfg, args.set)
    if not s["paths"]:
        raise CLIError(f"set {args.set!r}: no file matches {s['files']}")
    work = Path(args.output).with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    labels = read_label_table(s["labels"], s["columns"])
    rows = build_manifest("lamost", s["paths"], labels=labels)
    write_manifest(work / "manifest.fits", rows)
    preprocess.main(["--config", args.config, "--manifest", str(work / "manifest.fits"),
                     "--output", str(work / "preprocessed" / "index.h5")], comm=None)
    blob = torch.load(args.model, map_location="cpu", weights_only=False)
    ex = blob["extra"]
    net = SpectrumMLP(ex["npix"], ex["hidden"], len(ex["labels"]), ex["dropout"])
    net.load_state_dict(blob["model"])
    net.eval()
    cand = Candidate("mlp_pretrained", "mlp", "pretrained", "flux", net, list(ex["labels"]),
                     np.asarray(ex["label_mean"]), np.asarray(ex["label_std"]),
                     str(args.model))
    parts = []
    for sh in read_index(work / "preprocessed" / "index.h5"):
        d = read_inputs(sh, {"flux"})
        v, e = predict(cand, d["flux"], d["usable"])
        parts.append((d, v, e))
    labs = cand.labels
    cols = [LABEL_NAMES.index(lab) for lab in labs]
    t = Table()
    t["FILE"] = [Path(f).name for f in rows["FILE"]]
    cat = {k: np.concatenate([p[0][k] for p in parts]) for k in ("specid", "flags", "snr",
                                                                  "labels", "label_errors")}
    value = np.concatenate([p[1] for p in parts])
    error = np.concatenate([p[2] for p in parts])
    t["SPECID"], t["SNR"], t["FLAGS"] = cat["specid"], cat["snr"], cat["flags"]
    summary = []
    for i, lab in enumerate(labs):
        ref = cat["labels"][:, cols[i]].astype(np.float64)
        t[f"{lab.upper()}_REF"] = ref
        t[f"{lab.upper()}_PRED"] = value[:, i]
        t[f"{lab.upper()}_PRED_ERR"] = error[:, i]
        m = residual_metrics(value[:, i], error[:, i], ref, cat["label_errors"][:, cols[i]])
        summary.append({"label": lab, **m})
        if m["n"]:
            log.info("%s %-8s n %3d: robust sigma %.4g, bias %.4g (reference: %s)", args.set,
                     lab, m["n"], m["robust_sigma"], m["bias"], s.get("reference", ""))
    t.meta.update({"set": args.set, "reference": s.get("reference", ""),
                   "model": str(args.model), "summary": summary})
    with atomic_output(args.output) as tmp:
        t.write(tmp, format="ascii.ecsv")
    if args.figure:
        from specbridge.report import figures

        ref = np.column_stack([t[f"{lab.upper()}_REF"] for lab in labs])
        feh = ref[:, labs.index("feh")] if "feh" in labs else np.full(len(t), np.nan)
        keep = [i for i, lab in enumerate(labs) if np.isfinite(ref[:, i]).any()]
        with atomic_output(args.figure) as tmp:
            figures.one_to_one(tmp, ref[:, keep], {f"{args.set}: pretrained MLP":
                                                   (value[:, keep], error[:, keep])},
                               [labs[i] for i in keep], feh,
                               cfg["evaluation"]["feh_threshold"])
    log.info("wrote %s (%d spectra, %d with predictions)", args.output, len(t),
             int(np.isfinite(value[:, 0]).sum()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-real", help="real labelled LAMOST spectra vs the pretrained MLP",
                       description="Read, cross-match, preprocess and predict one set of real "
                                   "labelled LAMOST spectra (config real_validation) with the "
                                   "LAMOST-pretrained spectrum MLP; write predictions and "
                                   "reference labels side by side.")
    add_config_argument(p)
    p.add_argument("--set", required=True, help="name of a real_validation entry")
    p.add_argument("--model", required=True, help="pretrained spectrum-MLP checkpoint")
    p.add_argument("--output", required=True, help="table (ECSV) to write")
    p.add_argument("--figure", help="one-to-one figure (PNG) to write")
    p.set_defaults(func=run)
