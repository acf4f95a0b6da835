"""Evaluation: every candidate on the labelled DESI validation and test splits; its errors
recalibrated on validation; metrics per label, regime and S/N bin with bootstrap intervals
over stars; the router (``inference.router``, 'auto': the best [Fe/H] candidate on
validation); the per-regime selection table, on regimes from the router's [Fe/H] as at
inference, with the one-standard-error rule; the routed combination's figures next to the
single candidates'; the answers as paired differences with intervals."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from specbridge.atomic import atomic_output
from specbridge.errors import UserError
from specbridge.evaluation.markdown import metrics_markdown
from specbridge.splits import TEST, VALIDATION
from specbridge.stages import declared

CONFIG_SECTIONS = ("evaluation", "finetune", "inference", "training")
log = logging.getLogger("specbridge.evaluate")


def gather_labelled(cands, shards, ft: dict, labels, batch_size: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(data, scores): ``data`` the labelled validation + test rows of all shards with every
    candidate's predictions: specid, split, snr, ref, ref_err, ood_score and ood_distance
    (the embedding shard's; NaN without one), and '<candidate>/value', '<candidate>/error';
    ``scores`` split, ood_score and ood_distance of every labelled row, the training split's
    too (the out-of-domain calibration, :func:`ood_domain_threshold`)."""
    from specbridge import flags
    from specbridge.inference.predict import embedding_shard_scores, predict_all, read_inputs
    from specbridge.labels import index
    from specbridge.progress import Progress
    from specbridge.splits import TRAIN, assign_split

    cols = [index(lab) for lab in labels]
    need = {c.feature for c in cands}
    bad = flags.FATAL_MASK | flags.flag("BAD_LABEL") | flags.flag("AMBIGUOUS_MATCH")
    parts: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    progress = Progress("evaluate", log, unit="shards")
    for k, s in enumerate(shards):
        d = read_inputs(s, need)
        split = assign_split(d["star"], ft["val_fraction"], ft["test_fraction"])
        ref = d["labels"][:, cols]
        labelled = ((d["flags"] & bad) == 0) & np.isfinite(ref).any(1)
        keep = labelled & (split != TRAIN)
        n_rows = keep.size
        score = embedding_shard_scores(s, n_rows)
        dist = embedding_shard_scores(s, n_rows, "ood_distance")
        for key, v in (("split", split), ("ood_score", score), ("ood_distance", dist)):
            scores.setdefault(key, []).append(v[labelled])
        sub = {key: v[keep] for key, v in d.items()}
        preds = predict_all(cands, sub, batch_size)
        got = {"specid": sub["specid"], "split": split[keep], "snr": sub["snr"],
               "ref": ref[keep], "ref_err": d["label_errors"][keep][:, cols],
               "ood_score": score[keep], "ood_distance": dist[keep]}
        if "star" in sub:  # the per-star key, where the shards carry one
            got["star"] = sub["star"]
        for name, (v, e) in preds.items():
            got[f"{name}/value"], got[f"{name}/error"] = v, e
        for key, v in got.items():
            parts.setdefault(key, []).append(v)
        progress(k + 1, len(shards))
    return ({k: np.concatenate(v) for k, v in parts.items()},
            {k: np.concatenate(v) for k, v in scores.items()})


def ood_domain_threshold(data: dict[str, np.ndarray], percentile: float,
                         with_training_split: bool = True) -> dict[str, Any] | None:
    """The out-of-domain thresholds of the DESI domain, from the calibration stars: every
    labelled DESI star outside the test split (``data['split']`` != TEST: the fine-tuning and
    validation stars, in-domain by construction, their DESI spectra never seen by the
    pretrained SpecFormer that scores them; a tail percentile of the ~700 validation stars
    alone rests on a handful of stars), or without ``with_training_split`` (the SpecFormer
    pretrained on the training split's DESI spectra: ``training.specformer.target_spectra``)
    the validation stars. With the reconstruction score alone, its ``percentile`` (0-100);
    with the embedding distance as well, both at the one percentile q >= ``percentile``
    (``ood_joint_percentile``) at which a spectrum above either threshold is as rare among
    the calibration stars as ``100 - percentile`` %, so that the two checks together flag
    what one would. ``data``: 'split' (n,) split codes, 'ood_score' (n,) and optionally
    'ood_distance' (n,). Keys 'ood_threshold', 'ood_distance_threshold' (None without
    distances), 'ood_percentile', 'ood_joint_percentile', 'ood_threshold_n' (calibration
    stars), 'ood_calibration_splits' ('train+val' or 'val'), 'ood_calibration_flagged' and
    'ood_test_flagged' (fractions above either). None with fewer than 20 finite calibration
    scores."""
    score = data.get("ood_score")
    if score is None:
        return None
    calib = ((data["split"] != TEST) if with_training_split
             else (data["split"] == VALIDATION)) & np.isfinite(score)
    if calib.sum() < 20:
        return None
    dist = data.get("ood_distance")
    with_dist = dist is not None and (np.isfinite(dist) & calib).sum() >= 20
    target = 1.0 - percentile / 100.0

    def thresholds(q: float) -> tuple[float, float | None]:
        return (float(np.percentile(score[calib], q)),
                float(np.percentile(dist[calib & np.isfinite(dist)], q)) if with_dist else None)

    def above(rows: np.ndarray, thr: tuple[float, float | None]) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = score[rows] > thr[0]
            if thr[1] is not None:
                out |= dist[rows] > thr[1]
        return out

    q = float(percentile)
    if with_dist:  # the smallest q on a 0.01 grid whose union rate is within the target
        grid = np.unique(np.r_[q, np.arange(int(np.ceil(q * 100)), 10001) / 100.0])
        for q in grid:  # the union rate only falls as q rises; 100 flags none
            if above(calib, thresholds(float(q))).mean() <= target + 1e-12:
                break
        q = float(q)
    thr = thresholds(q)
    test = data["split"] == TEST
    return {"ood_threshold": thr[0], "ood_distance_threshold": thr[1],
            "ood_percentile": float(percentile), "ood_joint_percentile": round(q, 2),
            "ood_threshold_n": int(calib.sum()),
            "ood_calibration_splits": "train+val" if with_training_split else "val",
            "ood_calibration_flagged": float(above(calib, thr).mean()),
            "ood_test_flagged": float(above(test, thr).mean()) if test.any() else float("nan")}


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
    if router != "auto" and router not in names:
        raise UserError(f"inference.router {router!r} is not among the candidates {names}")
    if any(c.feature == "embedding" for c in cands) and not embeddings:
        raise UserError("embedding candidates need --embeddings")
    return cands


def star_keys(data: dict[str, np.ndarray]) -> np.ndarray:
    """(n,) the key that groups rows by star for the bootstrap: 'star' where the data has
    it, else the spectrum ID."""
    return data["star"] if "star" in data else data["specid"]


def choose_router(data: dict[str, np.ndarray], labels: list[str], names: list[str],
                  setting: str) -> str:
    """``setting`` itself, or for 'auto' the candidate with the lowest validation total error
    (sqrt(bias^2 + robust sigma^2)) in [Fe/H] over all validation stars (ties to the earlier
    candidate)."""
    from specbridge.evaluation.metrics import total_error

    if setting != "auto":
        return setting
    ife = labels.index("feh")
    val = data["split"] == 1
    sig = {n: total_error(data[f"{n}/value"][val, ife] - data["ref"][val, ife])
           for n in names}
    ok = [n for n in names if np.isfinite(sig[n])]
    if not ok:
        raise UserError("inference.router auto: no candidate has a validation [Fe/H]")
    return min(ok, key=sig.__getitem__)


def recalibrate(data: dict[str, np.ndarray], labels: list[str], names: list[str]):
    """The calibration table fitted on the validation split
    (:mod:`specbridge.evaluation.calibration`); replaces every '<name>/error' of ``data``
    by its recalibrated error and keeps the predicted one as '<name>/error_raw'."""
    from specbridge.evaluation import calibration

    table = calibration.fit_table(data, names, labels)
    cal = calibration.mapping(table)
    for n in names:
        raw = data[f"{n}/error"]
        data[f"{n}/error_raw"] = raw
        data[f"{n}/error"] = calibration.apply_all({n: (data[f"{n}/value"], raw)}, labels,
                                                   cal, data.get("snr"))[n][1]
    return table


def tabulate(data: dict[str, np.ndarray], labels: list[str], names: list[str],
             cfg: dict[str, Any]):
    """(metrics, selection, summary, calibration) tables of the candidates' predictions in
    ``data`` (see gather_labelled): errors recalibrated on validation (in ``data``), the
    router chosen, the selection made on the router's regimes, the routed combination
    added to ``data`` and the tables. The chosen router is ``selection.meta['router']``."""
    from specbridge.evaluation.bootstrap import paired_difference
    from specbridge.evaluation.selection import select, selection_mapping
    from specbridge.evaluation.tables import ROUTED, metrics_rows, metrics_table, summary
    from specbridge.inference.routing import regime_of, route, route_passes

    ev, inf = cfg["evaluation"], cfg["inference"]
    boot = ev["bootstrap"]
    thr = ev["feh_threshold"]
    groups = star_keys(data)
    ife = labels.index("feh")
    calib = recalibrate(data, labels, names)
    router = choose_router(data, labels, names, inf["router"])
    blend = {"blend_width": inf["blend_width"], "blend": inf["blend"]}

    def rows_for(name, regime, reference=True):
        return metrics_rows(name, data["split"], data[f"{name}/value"],
                            data[f"{name}/error"], data["ref"], data["ref_err"], data["snr"],
                            labels, thr, ev["snr_bins"], groups=groups, boot=boot,
                            router_regime=regime, reference=reference)

    def paired_on(split_code, regime=None, stat="robust_sigma"):
        def paired(lab, *args):
            a, b = args[-2:]
            m = data["split"] == split_code
            if regime is not None:
                m = m & (regime == {"metal_poor": 0, "metal_rich": 1}[args[0]])
            i = labels.index(lab)
            ref = data["ref"][m, i]
            return paired_difference(stat, data[f"{a}/value"][m, i] - ref,
                                     data[f"{b}/value"][m, i] - ref, groups=groups[m],
                                     n_boot=boot["n_boot"], level=boot["level"],
                                     seed=boot["seed"])
        return paired

    def selection_on(regime):
        rows = []
        for name in names:
            rows += rows_for(name, regime, reference=False)
        sel = select(metrics_table(reference_rows + rows), labels, names,
                     paired=paired_on(1, regime, "total_error"),
                     min_n=ev["min_regime_stars"])
        return sel, rows

    reference_rows = []
    for name in names:
        reference_rows += rows_for(name, None)
    regime = regime_of(data[f"{router}/value"][:, ife], thr)
    selection, router_rows = selection_on(regime)
    if inf["router_passes"] == 2:  # regimes again from the first pass's routed [Fe/H]
        first = route(_preds(data, names), names, labels, selection_mapping(selection),
                      router, thr, **blend)
        regime = regime_of(first.value[:, ife], thr)
        selection, router_rows = selection_on(regime)
    routed = route_passes(_preds(data, names), names, labels, selection_mapping(selection),
                          router, thr, passes=inf["router_passes"], **blend)
    data[f"{ROUTED}/value"], data[f"{ROUTED}/error"] = routed.value, routed.error
    data[f"{ROUTED}/regime"], data[f"{ROUTED}/served"] = routed.regime, routed.served
    data["router_regime"] = regime
    metrics = metrics_table(reference_rows + router_rows + rows_for(ROUTED, regime))
    selection.meta.update({"router": router, "router_setting": inf["router"],
                           "router_passes": inf["router_passes"], "blend": inf["blend"],
                           "min_regime_stars": ev["min_regime_stars"],
                           "level": boot["level"], "n_boot": boot["n_boot"]})
    summ = summary(metrics, labels, names, paired=paired_on(2), router=router)
    return metrics, selection, summ, calib


def _preds(data, names):
    return {n: (data[f"{n}/value"], data[f"{n}/error"]) for n in names}


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None) -> int:
    """Every candidate ``inputs['checkpoints']`` on the labelled validation and test rows of
    ``inputs['spectra']`` (and ``inputs['embeddings']``); writes ``outputs['metrics']``,
    ``['selection']``, ``['summary']``, ``['calibration']`` (ECSV; the last optional),
    ``['metrics_md']`` (markdown) and ``['predictions']`` (HDF5)."""
    from specbridge.inference.predict import paired_shards

    cfg = declared(cfg, CONFIG_SECTIONS)
    ev, inf = cfg["evaluation"], cfg["inference"]
    cands = load_checked_candidates(inputs["checkpoints"], inf["router"],
                                    inputs.get("embeddings"))
    labels = cands[0].labels
    names = [c.name for c in cands]
    need_emb = any(c.feature == "embedding" for c in cands)
    shards = paired_shards(inputs["spectra"], inputs.get("embeddings") if need_emb else None)
    data, scores = gather_labelled(cands, shards, cfg["finetune"], labels, inf["batch_size"])
    n_val = int((data["split"] == VALIDATION).sum())
    n_test = int((data["split"] == TEST).sum())
    log.info("%d candidates on %d validation and %d test DESI spectra with labels",
             len(cands), n_val, n_test)
    if n_val == 0 or n_test == 0:
        raise UserError(f"{n_val} validation / {n_test} test spectra with labels: too few")
    metrics, selection, summ, calib = tabulate(data, labels, names, cfg)
    from specbridge.stages.pretrain import specformer_training

    seen = bool(specformer_training(cfg["training"]).get("target_spectra"))
    domain = ood_domain_threshold(scores, inf["ood"]["percentile"], not seen)
    if domain is not None:
        calib.meta.update(domain)
        log.info("out-of-domain thresholds of the DESI domain (each at the %g-th percentile "
                 "of %d calibration stars (%s), so that %.1f %% of them are above either): "
                 "score %.4g, embedding distance %s; test stars above either: %.1f %%",
                 domain["ood_joint_percentile"], domain["ood_threshold_n"],
                 domain["ood_calibration_splits"],
                 100 * domain["ood_calibration_flagged"], domain["ood_threshold"],
                 domain["ood_distance_threshold"], 100 * domain["ood_test_flagged"])
    meta = {"labels": labels, "candidates": names, "router": selection.meta["router"],
            "router_setting": inf["router"], "router_passes": inf["router_passes"],
            "blend": inf["blend"], "feh_threshold": ev["feh_threshold"],
            "blend_width": inf["blend_width"], "min_regime_stars": ev["min_regime_stars"],
            "bootstrap": dict(ev["bootstrap"]), "n_val": n_val, "n_test": n_test}
    write_outputs(outputs, data, metrics, selection, summ, meta, calib)
    log.info("router: %s (%s)", meta["router"], inf["router"])
    for r in summ:
        log.info("%-8s test robust sigma: zero-shot %s %.4g | fine-tuned %s %.4g | routed "
                 "%.4g | best single on test %s %.4g | fine-tuning beats zero-shot: %s | "
                 "routing beats every single: %s", r["label"], r["zeroshot"],
                 r["zeroshot_test_sigma"], r["finetuned"], r["finetuned_test_sigma"],
                 r["routed_test_sigma"], r["best_on_test"], r["best_on_test_sigma"],
                 r["finetuning_beats_zeroshot"], r["routing_beats_every_single"])
    log.info("wrote %s", ", ".join(str(v) for v in outputs.values() if v))
    return 0


def write_outputs(outputs: dict[str, Any], data: dict[str, np.ndarray], metrics, selection,
                  summ, meta: dict[str, Any], calib=None) -> None:
    """The ECSV tables (with ``meta``; the calibration table where ``outputs`` names
    'calibration'), the markdown page and the predictions HDF5, each written atomically."""
    from specbridge.io.shards import write_arrays

    tables = [(metrics, "metrics"), (selection, "selection"), (summ, "summary")]
    if calib is not None and outputs.get("calibration"):
        tables.append((calib, "calibration"))
    for tab, _ in tables:
        tab.meta.update(meta)
    for tab, key in tables:
        with atomic_output(outputs[key]) as tmp:
            tab.write(tmp, format="ascii.ecsv")
    write_arrays(outputs["predictions"], data, {
        "labels": meta["labels"], "candidates": meta["candidates"],
        "feh_threshold": meta["feh_threshold"], "router": meta["router"]}, data["specid"].shape[0])
    with atomic_output(outputs["metrics_md"]) as tmp:
        Path(tmp).write_text(metrics_markdown(metrics, selection, summ, meta["labels"],
                                              meta["candidates"], meta, calib))
