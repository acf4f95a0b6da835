"""``specbridge evaluate``: every candidate on the labelled DESI validation and test splits;
metrics per label, regime and S/N bin; the per-regime selection table; the routed
combination's figures next to the single candidates'."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.cli._common import CLIError, add_config_argument, config_from_args

log = logging.getLogger("specbridge.evaluate")


def gather_labelled(cands, shards, ft: dict, labels, batch_size: int) -> dict[str, np.ndarray]:
    """Labelled validation + test rows of all shards with every candidate's predictions:
    specid, split, snr, ref, ref_err, and '<candidate>/value', '<candidate>/error'."""
    from specbridge import flags
    from specbridge.inference.predict import predict_all, read_inputs
    from specbridge.io.shards import LABEL_NAMES
    from specbridge.progress import Progress
    from specbridge.splits import TRAIN, assign_split

    cols = [LABEL_NAMES.index(lab) for lab in labels]
    need = {c.feature for c in cands}
    bad = flags.FATAL_MASK | flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
    parts: dict[str, list[np.ndarray]] = {}
    progress = Progress("evaluate", log, unit="shards")
    for k, s in enumerate(shards):
        d = read_inputs(s, need)
        split = assign_split(d["specid"], ft["val_fraction"], ft["test_fraction"])
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


def run(args: argparse.Namespace) -> int:
    from specbridge.evaluation.selection import select, selection_mapping
    from specbridge.evaluation.tables import (
        ROUTED,
        metrics_rows,
        metrics_table,
        summary,
    )
    from specbridge.inference.predict import load_candidates, paired_shards
    from specbridge.inference.routing import route
    from specbridge.io.shards import write_arrays

    cfg = config_from_args(args)
    ev, ft, inf = cfg["evaluation"], cfg["finetune"], cfg["inference"]
    try:
        cands = load_candidates(args.checkpoints)
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"cannot load the candidates: {exc}") from None
    labels = cands[0].labels
    names = [c.name for c in cands]
    if "feh" not in labels:
        raise CLIError("evaluation by regime needs 'feh' among the labels")
    if inf["router"] not in names:
        raise CLIError(f"inference.router {inf['router']!r} is not among the candidates "
                       f"{names}")
    need_emb = any(c.feature == "embedding" for c in cands)
    if need_emb and not args.embeddings:
        raise CLIError("embedding candidates need --embeddings")
    shards = paired_shards(args.spectra, args.embeddings if need_emb else None)
    data = gather_labelled(cands, shards, ft, labels, inf["batch_size"])
    n_val = int((data["split"] == 1).sum())
    n_test = int((data["split"] == 2).sum())
    log.info("%d candidates on %d validation and %d test DESI spectra with labels",
             len(cands), n_val, n_test)
    if n_val == 0 or n_test == 0:
        raise CLIError(f"{n_val} validation / {n_test} test spectra with labels: too few")
    def rows_for(name, value, error):
        return metrics_rows(name, data["split"], value, error, data["ref"], data["ref_err"],
                            data["snr"], labels, ev["feh_threshold"], ev["snr_bins"])

    rows = []
    for name in names:
        rows += rows_for(name, data[f"{name}/value"], data[f"{name}/error"])
    metrics = metrics_table(rows)
    selection = select(metrics, labels, names)
    preds = {n: (data[f"{n}/value"], data[f"{n}/error"]) for n in names}
    routed = route(preds, names, labels, selection_mapping(selection), inf["router"],
                   ev["feh_threshold"], inf["blend_width"])
    data[f"{ROUTED}/value"], data[f"{ROUTED}/error"] = routed.value, routed.error
    data[f"{ROUTED}/regime"], data[f"{ROUTED}/served"] = routed.regime, routed.served
    metrics = metrics_table(rows + rows_for(ROUTED, routed.value, routed.error))
    summ = summary(metrics, labels, names)
    meta = {"labels": labels, "candidates": names, "router": inf["router"],
            "feh_threshold": ev["feh_threshold"], "blend_width": inf["blend_width"],
            "n_val": n_val, "n_test": n_test}
    metrics.meta.update(meta)
    selection.meta.update(meta)
    summ.meta.update(meta)
    for tab, path in ((metrics, args.metrics), (selection, args.selection)):
        with atomic_output(path) as tmp:
            tab.write(tmp, format="ascii.ecsv")
    with atomic_output(args.summary) as tmp:
        summ.write(tmp, format="ascii.ecsv")
    write_arrays(args.predictions, data, {"labels": labels, "candidates": names,
                                          "feh_threshold": ev["feh_threshold"]},
                 data["specid"].shape[0])
    with atomic_output(args.metrics_md) as tmp:
        Path(tmp).write_text(metrics_markdown(metrics, selection, summ, labels, names, meta))
    for r in summ:
        log.info("%-8s test robust sigma: zero-shot %s %.4g | fine-tuned %s %.4g | routed "
                 "%.4g | best single on test %s %.4g", r["label"], r["zeroshot"],
                 r["zeroshot_test_sigma"], r["finetuned"], r["finetuned_test_sigma"],
                 r["routed_test_sigma"], r["best_on_test"], r["best_on_test_sigma"])
    log.info("wrote %s, %s, %s, %s", args.metrics, args.metrics_md, args.selection,
             args.predictions)
    return 0


def metrics_markdown(metrics, selection, summ, labels, names, meta) -> str:
    from specbridge.evaluation.tables import markdown

    out = ["# Evaluation on DESI", "",
           f"{meta['n_val']} validation and {meta['n_test']} test spectra with reference "
           f"labels; regimes split at [Fe/H] = {meta['feh_threshold']} (by the reference "
           f"label in these tables; by the router {meta['router']} when routing). Robust "
           "sigma: Tukey biweight (c = 6) about the median.", "",
           "## Answers (test split)", "",
           markdown(summ, ["label", "unit", "zeroshot", "zeroshot_test_sigma", "finetuned",
                           "finetuned_test_sigma", "routed_test_sigma", "best_on_test",
                           "best_on_test_sigma", "finetuning_beats_zeroshot",
                           "routing_beats_every_single"]), "",
           "## Selection (validation split)", "", markdown(selection), ""]
    for sp in ("test", "val"):
        out += [f"## Robust sigma by regime ({sp} split)", ""]
        for lab in labels:
            t = metrics[(metrics["split"] == sp) & (metrics["label"] == lab)
                        & (metrics["snr_bin"] == "all")]
            rows = []
            for cand in [*names, "routed"]:
                r = t[t["candidate"] == cand]
                get = {rg: r[r["regime"] == rg] for rg in ("all", "metal_poor", "metal_rich")}
                rows.append([cand] + [float(get[rg]["robust_sigma"][0]) for rg in get]
                            + [float(get["all"]["bias"][0]),
                               float(get["all"]["outlier_fraction"][0]),
                               float(get["all"]["within_1sigma"][0]),
                               float(get["all"]["z_robust_sigma"][0]),
                               int(get["all"]["n"][0])])
            from astropy.table import Table

            tab = Table(rows=rows, names=["candidate", "all", "metal_poor", "metal_rich",
                                          "bias", "outliers", "within_1sigma", "z_sigma", "n"])
            out += [f"### {lab} ({t['unit'][0]})", "", markdown(tab), ""]
    out += ["## By S/N (test split)", ""]
    for lab in labels:
        t = metrics[(metrics["split"] == "test") & (metrics["label"] == lab)
                    & (metrics["regime"] == "all") & (metrics["snr_bin"] != "all")]
        out += [f"### {lab}", "", markdown(t, ["candidate", "snr_bin", "n", "robust_sigma",
                                                "bias", "outlier_fraction"]), ""]
    return "\n".join(out)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics per candidate and regime; selection table",
                       description="Robust sigma, bias, MAD, outliers and calibration of every "
                                   "candidate on the DESI validation and test splits, per "
                                   "label, regime and S/N bin; the per-regime selection "
                                   "(lowest validation robust sigma) and the routed "
                                   "combination's test figures.")
    add_config_argument(p)
    p.add_argument("--checkpoints", nargs="+", required=True, help="candidate checkpoints")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed DESI spectra")
    p.add_argument("--embeddings", help="index HDF5 of DESI embeddings (embedding candidates)")
    p.add_argument("--metrics", required=True, help="metrics table (ECSV) to write")
    p.add_argument("--metrics-md", required=True, help="metrics tables (markdown) to write")
    p.add_argument("--selection", required=True, help="selection table (ECSV) to write")
    p.add_argument("--summary", required=True, help="answers table (ECSV) to write")
    p.add_argument("--predictions", required=True,
                   help="validation/test predictions (HDF5, for the report) to write")
    p.set_defaults(func=run)
