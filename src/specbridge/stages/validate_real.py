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

CONFIG_SECTIONS = ("real_validation", "reference_data", "evaluation", "inference",
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
    cand.support = meta.get("label_support")
    return (rows, cat, np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), cand)


def out_of_domain(cfg: dict[str, Any], specformer: str | Path | None, index: Path,
                  value: np.ndarray, error: np.ndarray, support: dict[str, Any] | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """(score (n,), embedding distance (n,), flag bits (n,), score threshold) of the
    preprocessed spectra of ``index``
    predicted as ``value``/``error`` (n, n_labels): the checks of
    :mod:`specbridge.inference.ood` with the SpecFormer checkpoint ``specformer`` (spectrum
    space; skipped without one) and the training-label ``support`` (label space; one
    candidate, so no disagreement check)."""
    from specbridge import flags
    from specbridge.inference.ood import (
        density_distance,
        ood_flags,
        score_threshold,
        spectrum_scores,
    )
    from specbridge.io.shards import read_index, read_shard
    from specbridge.models.checkpoint import load_model
    from specbridge.stages.embed import embed_rows

    ood = cfg["inference"]["ood"]
    n = value.shape[0]
    score, dist, threshold, dist_threshold = np.full(n, np.nan), np.full(n, np.nan), None, None
    if specformer:
        sf, ck = load_model(specformer, kinds=("specformer",))
        mean = np.asarray(ck.meta["embed_mean"], np.float32)
        std = np.asarray(ck.meta["embed_std"], np.float32)
        parts, dparts = [], []
        for sh in read_index(index):
            d = read_shard(sh["path"], ("flux", "ivar", "flags"))
            usable = ~flags.is_fatal(d["flags"]) & ((d["ivar"] > 0).sum(1) > 0)
            parts.append(spectrum_scores(sf, d["flux"], d["ivar"], usable))
            emb = embed_rows(sf, d["flux"], d["ivar"], usable, mean, std)
            dparts.append(density_distance(emb, ck.meta.get("ood_density")))
        score = np.concatenate(parts).astype(np.float64)
        dist = np.concatenate(dparts)
        q = ck.meta.get("ood_score_quantiles")
        threshold = score_threshold(q, ood["percentile"]) if q else None
        q = ck.meta.get("ood_distance_quantiles")
        dist_threshold = score_threshold(q, ood["percentile"]) if q else None
    bits = ood_flags(score, threshold, value, error, support, [], ood["z_max"], dist,
                     dist_threshold, ood["percentile"])
    return score, dist, bits, threshold


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
    score, dist, ood_bits, threshold = out_of_domain(cfg, inputs.get("specformer"),
                                               work / "preprocessed" / "index.h5", value,
                                               error, cand.support)
    t["SPECID"], t["SNR"] = cat["specid"], cat["snr"]
    t["FLAGS"] = cat["flags"].astype(np.int64) | ood_bits
    t["OOD_SCORE"] = score
    t["OOD_DISTANCE"] = dist
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
    ood = ood_summary(t, labs, cand.support, threshold)
    log.info("%s: out of domain %d of %d spectra (spectrum %d, labels %d)", set_name,
             ood["n_flagged"], ood["n"], ood["n_spectrum"], ood["n_labels"])
    t.meta.update({"set": set_name, "reference": s.get("reference", ""),
                   "model": str(inputs["model"]), "summary": summary, "ood": ood})
    with atomic_output(outputs["table"]) as tmp:
        t.write(tmp, format="ascii.ecsv")
    if outputs.get("figure"):
        one_to_one_figure(outputs["figure"], t, labs, set_name,
                          cfg["evaluation"]["feh_threshold"])
    log.info("wrote %s (%d spectra, %d with predictions)", outputs["table"], len(t),
             int(np.isfinite(value[:, 0]).sum()))
    return 0


def ood_summary(t: Any, labels: list[str], support: dict[str, Any] | None,
                threshold: float | None) -> dict[str, Any]:
    """Counts of out-of-domain flags among the table's spectra with a prediction: ``n``,
    ``n_spectrum``, ``n_labels``, ``n_flagged`` (either), the score ``threshold``, and for
    stars whose reference Teff lies below the training labels' range (``teff_lo``, K)
    ``n_below_teff`` and ``n_below_teff_flagged``. ``labels``: the order of ``support``."""
    from specbridge import flags
    from specbridge.labels import column

    fl = np.asarray(t["FLAGS"], np.int64)
    has = np.isfinite(np.asarray(t[f"{column(labels[0])}_PRED"], np.float64))
    spec = (fl & flags.flag("OOD_SPECTRUM")) != 0
    lab = (fl & flags.flag("OOD_LABELS")) != 0
    out = {"n": int(has.sum()), "n_spectrum": int((spec & has).sum()),
           "n_labels": int((lab & has).sum()), "n_flagged": int(((spec | lab) & has).sum()),
           "threshold": threshold}
    if support and "teff" in labels:
        lo = float(support["lo"][labels.index("teff")])
        with np.errstate(invalid="ignore"):
            below = has & (np.asarray(t[f"{column('teff')}_REF"], np.float64) < lo)
        out.update({"teff_lo": lo, "n_below_teff": int(below.sum()),
                    "n_below_teff_flagged": int(((spec | lab) & below).sum())})
    return out


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
