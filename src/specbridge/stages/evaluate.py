"""Evaluation: every candidate on the labelled DESI validation and test splits; metrics per
label, regime and S/N bin; the per-regime selection table; the routed combination's figures
next to the single candidates'."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.errors import UserError
from specbridge.evaluation.markdown import metrics_markdown
from specbridge.stages import declared

CONFIG_SECTIONS = ("evaluation", "finetune", "inference")
log = logging.getLogger("specbridge.evaluate")


def gather_labelled(cands, shards, ft: dict, labels, batch_size: int) -> dict[str, np.ndarray]:
    """Labelled validation + test rows of all shards with every candidate's predictions:
    specid, split, snr, ref, ref_err, and '<candidate>/value', '<candidate>/error'."""
    from specbridge import flags
    from specbridge.inference.predict import predict_all, read_inputs
    from specbridge.labels import index
    from specbridge.progress import Progress
    from specbridge.splits import TRAIN, assign_split

    cols = [index(lab) for lab in labels]
    need = {c.feature for c in cands}
    bad = flags.FATAL_MASK | flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
    parts: dict[str, list[np.ndarray]] = {}
    progress = Progress("evaluate", log, unit="shards")
    for k, s in enumerate(shards):
        d = read_inputs(s, need)
        split = assign_split(d["star"], ft["val_fraction"], ft["test_fraction"])
        ref = d["labels"][:, cols]
        keep = ((d["flags"] & bad) == 0) & np.isfinite(ref).any(1) & (split != TRAIN)
        sub = {key: v[keep] for key, v in d.items()}
        preds = predict_all(cands, sub, batch_size)
        got = {"specid": sub["specid"], "split": split[keep], "snr": sub["snr"],
               "ref": ref[keep], "ref_err": d["label_errors"][keep][:, cols]}
        for name, (v, e) in preds.items():
            got[f"{name}/value"], got[f"{name}/error"] = v, e
        for key, v in got.items():
            parts.setdefault(key, []).append(v)
        progress(k + 1, len(shards))
    return {k: np.concatenate(v) for k, v in parts.items()}


def load_checked_candidates(paths: list[str], router: str, embeddings: str | None):
    """The candidates of ``paths``, checked for what evaluation needs: [Fe/H] among the
    labels, the router among the candidates, embeddings given when a candidate needs them."""
    from specbridge.inference.predict import load_candidates

    try:
        cands = load_candidates(paths)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the candidates: {exc}") from None
    names = [c.name for c in cands]
    if "feh" not in cands[0].labels:
        raise UserError("evaluation by regime needs 'feh' among the labels")
    if router not in names:
        raise UserError(f"inference.router {router!r} is not among the candidates {names}")
    if any(c.feature == "embedding" for c in cands) and not embeddings:
        raise UserError("embedding candidates need --embeddings")
    return cands


def tabulate(data: dict[str, np.ndarray], labels: list[str], names: list[str],
             cfg: dict[str, Any]):
    """(metrics, selection, summary) tables of the candidates' predictions in ``data`` (see
    gather_labelled), with the routed combination added to ``data`` and the tables."""
    from specbridge.evaluation.selection import select, selection_mapping
    from specbridge.evaluation.tables import ROUTED, metrics_rows, metrics_table, summary
    from specbridge.inference.routing import route

    ev, inf = cfg["evaluation"], cfg["inference"]

    def rows_for(name, value, error):
        return metrics_rows(name, data["split"], value, error, data["ref"], data["ref_err"],
                            data["snr"], labels, ev["feh_threshold"], ev["snr_bins"])

    rows = []
    for name in names:
        rows += rows_for(name, data[f"{name}/value"], data[f"{name}/error"])
    selection = select(metrics_table(rows), labels, names)
    preds = {n: (data[f"{n}/value"], data[f"{n}/error"]) for n in names}
    routed = route(preds, names, labels, selection_mapping(selection), inf["router"],
                   ev["feh_threshold"], inf["blend_width"])
    data[f"{ROUTED}/value"], data[f"{ROUTED}/error"] = routed.value, routed.error
    data[f"{ROUTED}/regime"], data[f"{ROUTED}/served"] = routed.regime, routed.served
    metrics = metrics_table(rows + rows_for(ROUTED, routed.value, routed.error))
    return metrics, selection, summary(metrics, labels, names)


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None) -> int:
    """Every candidate ``inputs['checkpoints']`` on the labelled validation and test rows of
    ``inputs['spectra']`` (and ``inputs['embeddings']``); writes ``outputs['metrics']``,
    ``['selection']``, ``['summary']`` (ECSV), ``['metrics_md']`` (markdown) and
    ``['predictions']`` (HDF5)."""
    from specbridge.inference.predict import paired_shards

    cfg = declared(cfg, CONFIG_SECTIONS)
    ev, inf = cfg["evaluation"], cfg["inference"]
    cands = load_checked_candidates(inputs["checkpoints"], inf["router"],
                                    inputs.get("embeddings"))
    labels = cands[0].labels
    names = [c.name for c in cands]
    need_emb = any(c.feature == "embedding" for c in cands)
    shards = paired_shards(inputs["spectra"], inputs.get("embeddings") if need_emb else None)
    data = gather_labelled(cands, shards, cfg["finetune"], labels, inf["batch_size"])
    n_val = int((data["split"] == 1).sum())
    n_test = int((data["split"] == 2).sum())
    log.info("%d candidates on %d validation and %d test DESI spectra with labels",
             len(cands), n_val, n_test)
    if n_val == 0 or n_test == 0:
        raise UserError(f"{n_val} validation / {n_test} test spectra with labels: too few")
    metrics, selection, summ = tabulate(data, labels, names, cfg)
    meta = {"labels": labels, "candidates": names, "router": inf["router"],
            "feh_threshold": ev["feh_threshold"], "blend_width": inf["blend_width"],
            "n_val": n_val, "n_test": n_test}
    write_outputs(outputs, data, metrics, selection, summ, meta)
    for r in summ:
        log.info("%-8s test robust sigma: zero-shot %s %.4g | fine-tuned %s %.4g | routed "
                 "%.4g | best single on test %s %.4g", r["label"], r["zeroshot"],
                 r["zeroshot_test_sigma"], r["finetuned"], r["finetuned_test_sigma"],
                 r["routed_test_sigma"], r["best_on_test"], r["best_on_test_sigma"])
    log.info("wrote %s, %s, %s, %s", outputs["metrics"], outputs["metrics_md"],
             outputs["selection"], outputs["predictions"])
    return 0


def write_outputs(outputs: dict[str, Any], data: dict[str, np.ndarray], metrics, selection,
                  summ, meta: dict[str, Any]) -> None:
    """The three ECSV tables (with ``meta``), the markdown page and the predictions HDF5,
    each written atomically."""
    from specbridge.io.shards import write_arrays

    for tab in (metrics, selection, summ):
        tab.meta.update(meta)
    for tab, key in ((metrics, "metrics"), (selection, "selection"), (summ, "summary")):
        with atomic_output(outputs[key]) as tmp:
            tab.write(tmp, format="ascii.ecsv")
    write_arrays(outputs["predictions"], data, {
        "labels": meta["labels"], "candidates": meta["candidates"],
        "feh_threshold": meta["feh_threshold"]}, data["specid"].shape[0])
    with atomic_output(outputs["metrics_md"]) as tmp:
        Path(tmp).write_text(metrics_markdown(metrics, selection, summ, meta["labels"],
                                              meta["candidates"], meta))
