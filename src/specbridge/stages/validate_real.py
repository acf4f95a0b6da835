"""Real labelled LAMOST spectra (config ``real_validation``) through the same reader, manifest
and preprocessing as the survey, then the LAMOST-pretrained spectrum MLP; predictions next to
the reference labels, whatever they show."""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.errors import UserError
from specbridge.stages import declared
from specbridge.stages import preprocess as preprocess_stage

CONFIG_SECTIONS = ("real_validation", "reference_data", "evaluation",
                   *preprocess_stage.CONFIG_SECTIONS)
log = logging.getLogger("specbridge.validate_real")


def real_set(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The named entry of ``real_validation`` with ``{reference_data}`` filled in and its
    file globs expanded (key 'paths')."""
    for s in cfg["real_validation"]:
        if s["name"] == name:
            ref = str(cfg["reference_data"])
            out = {**s, "labels": s["labels"].replace("{reference_data}", ref)}
            out["paths"] = sorted(p for g in s["files"]
                                  for p in glob.glob(g.replace("{reference_data}", ref)))
            return out
    raise UserError(f"no real_validation set named {name!r} in the config")


def predict_set(cfg: dict[str, Any], s: dict[str, Any], model: str | Path, work: Path):
    """Manifest, preprocessing (in ``work``) and the pretrained MLP ``model`` on the set
    ``s``: (manifest rows, row fields {specid, flags, snr, labels, label_errors}, value,
    error (n, n_labels) in physical units, the candidate)."""
    from specbridge.inference.predict import Candidate, predict, read_inputs
    from specbridge.io.labels import read_label_table
    from specbridge.io.manifest import build_manifest, write_manifest
    from specbridge.io.shards import read_index
    from specbridge.models.checkpoint import load_model

    rows = build_manifest("lamost", s["paths"], labels=read_label_table(s["labels"],
                                                                        s["columns"]))
    write_manifest(work / "manifest.fits", rows)
    index = work / "preprocessed" / "index.h5"
    preprocess_stage.run(cfg, {"manifest": work / "manifest.fits"}, {"index": index})
    net, ck = load_model(model, kinds=("mlp",))
    meta = ck.meta
    cand = Candidate("mlp_pretrained", "mlp", "pretrained", "flux", net, list(meta["labels"]),
                     np.asarray(meta["label_mean"]), np.asarray(meta["label_std"]), str(model))
    parts = []
    for sh in read_index(index):
        d = read_inputs(sh, {"flux"})
        v, e = predict(cand, d["flux"], d["usable"])
        parts.append((d, v, e))
    cat = {k: np.concatenate([p[0][k] for p in parts])
           for k in ("specid", "flags", "snr", "labels", "label_errors")}
    return (rows, cat, np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), cand)


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, set_name: str) -> int:
    """Predict the real set ``set_name`` with the pretrained MLP ``inputs['model']``; write
    the table ``outputs['table']`` (ECSV: reference and predicted labels per spectrum, a
    per-label summary in its meta) and, if given, the one-to-one figure ``outputs['figure']``.
    Intermediate files go to a folder beside the table."""
    from astropy.table import Table

    from specbridge.evaluation.metrics import residual_metrics
    from specbridge.labels import column, index

    cfg = declared(cfg, CONFIG_SECTIONS)
    s = real_set(cfg, set_name)
    if not s["paths"]:
        raise UserError(f"set {set_name!r}: no file matches {s['files']}")
    work = Path(outputs["table"]).with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    rows, cat, value, error, cand = predict_set(cfg, s, inputs["model"], work)
    labs = cand.labels
    cols = [index(lab) for lab in labs]
    t = Table()
    t["FILE"] = [Path(f).name for f in rows["FILE"]]
    t["LABEL_ID"] = rows["LABEL_ID"]  # the reference star: repeat visits share it
    t["SPECID"], t["SNR"], t["FLAGS"] = cat["specid"], cat["snr"], cat["flags"]
    summary = []
    for i, lab in enumerate(labs):
        ref = cat["labels"][:, cols[i]].astype(np.float64)
        t[f"{column(lab)}_REF"] = ref
        t[f"{column(lab)}_PRED"] = value[:, i]
        t[f"{column(lab)}_PRED_ERR"] = error[:, i]
        m = residual_metrics(value[:, i], error[:, i], ref, cat["label_errors"][:, cols[i]])
        summary.append({"label": lab, **m})
        if m["n"]:
            log.info("%s %-8s n %3d: robust sigma %.4g, bias %.4g (reference: %s)", set_name,
                     lab, m["n"], m["robust_sigma"], m["bias"], s.get("reference", ""))
    t.meta.update({"set": set_name, "reference": s.get("reference", ""),
                   "model": str(inputs["model"]), "summary": summary})
    with atomic_output(outputs["table"]) as tmp:
        t.write(tmp, format="ascii.ecsv")
    if outputs.get("figure"):
        one_to_one_figure(outputs["figure"], t, labs, set_name,
                          cfg["evaluation"]["feh_threshold"])
    log.info("wrote %s (%d spectra, %d with predictions)", outputs["table"], len(t),
             int(np.isfinite(value[:, 0]).sum()))
    return 0


def one_to_one_figure(path: str | Path, t: Any, labs: list[str], set_name: str,
                      threshold: float) -> None:
    """Predicted vs reference labels of the table ``t`` (labels with any reference only),
    coloured by regime about ``threshold`` ([Fe/H], dex)."""
    from specbridge.labels import column
    from specbridge.report import figures

    ref = np.column_stack([t[f"{column(lab)}_REF"] for lab in labs])
    value = np.column_stack([t[f"{column(lab)}_PRED"] for lab in labs])
    error = np.column_stack([t[f"{column(lab)}_PRED_ERR"] for lab in labs])
    feh = ref[:, labs.index("feh")] if "feh" in labs else np.full(len(t), np.nan)
    keep = [i for i, lab in enumerate(labs) if np.isfinite(ref[:, i]).any()]
    with atomic_output(path) as tmp:
        figures.one_to_one(tmp, ref[:, keep], {f"{set_name}: pretrained MLP":
                                               (value[:, keep], error[:, keep])},
                           [labs[i] for i in keep], feh, threshold)
