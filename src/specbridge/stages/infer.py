"""Sharded inference: every candidate's predictions for every preprocessed DESI spectrum,
routed by regime, as one HDF5 prediction shard per spectra shard.

One MPI job (the map over shards is :mod:`specbridge.parallel.executor`): rank 0 reads the
selection (and the router it names where ``inference.router`` is 'auto'), the error
recalibration, the checkpoints' digests and the shard indexes and broadcasts them. A
prediction shard's fingerprint chains its spectra shard's and embedding shard's fingerprints
with the checkpoints' SHA-256, the routing and the recalibration, so anything that changes
upstream (a preprocessing setting, a model, the selection, the calibration) recomputes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specbridge import __version__
from specbridge.parallel.executor import (
    ShardJob,
    ShardResult,
    ShardTask,
    fingerprint,
    input_fingerprints,
    run_shards,
)
from specbridge.parallel.mpi import (
    bcast_from_rank0,
    comm_rank_size,
    cores_per_rank,
    node_rank_size,
    rank0_logger,
    run_or_abort,
)
from specbridge.stages import declared

CONFIG_SECTIONS = ("evaluation", "inference")


def plan(cfg: dict[str, Any], inputs: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """What every rank needs (read on rank 0): the tasks, the selection mapping, the routing
    settings (router: the configured one, or for 'auto' the selection table's), the error
    recalibration ({(candidate, label): (scale, floor, snr_slope)}; empty without
    ``inputs['calibration']``) and the checkpoints' digests."""
    from astropy.table import Table

    from specbridge.digest import sha256
    from specbridge.errors import UserError, describe
    from specbridge.evaluation.calibration import mapping as calibration_mapping
    from specbridge.evaluation.selection import selection_mapping
    from specbridge.inference.predict import paired_shards

    try:
        sel_table = Table.read(inputs["selection"], format="ascii.ecsv")
        calib_table = (Table.read(inputs["calibration"], format="ascii.ecsv")
                       if inputs.get("calibration") else None)
        calib = calibration_mapping(calib_table) if calib_table is not None else {}
        digests = {str(p): sha256(Path(p)) for p in inputs["checkpoints"]}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError("cannot read the selection, the calibration or the checkpoints: "
                        f"{describe(exc)}") from None
    try:
        shards = paired_shards(inputs["spectra"], inputs.get("embeddings"))
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read the spectra/embedding index: {describe(exc)}") from None
    inf = cfg["inference"]
    selection = selection_mapping(sel_table)
    router = inf["router"]
    if router == "auto":
        router = str(sel_table.meta.get("router", ""))
        if not router:
            raise UserError(f"{inputs['selection']}: inference.router is auto but the "
                            "selection table names no router (evaluate again)")
    routing = {"selection": sorted(selection.items()), "router": router,
               "router_setting": inf["router"], "router_passes": inf["router_passes"],
               "threshold": cfg["evaluation"]["feh_threshold"], "blend": inf["blend"],
               "blend_width": inf["blend_width"],
               "calibration": sorted([list(k), list(v)] for k, v in calib.items()),
               "ood": _ood_settings(inf["ood"], inputs.get("embeddings"),
                                    calib_table.meta if calib_table is not None else {})}
    settings = fingerprint(sorted(digests.values()), routing, __version__)
    fps = input_fingerprints(shards)
    emb_fps: list[str | None] = [None] * len(shards)
    if inputs.get("embeddings"):
        from specbridge.io.shards import read_index

        by_row = {e["first_row"]: e for e in read_index(inputs["embeddings"])}
        emb_fps = list(input_fingerprints([by_row[s["first_row"]] for s in shards]))
    tasks = [ShardTask(i, s["first_row"], s["n"], str(out_dir / f"pred-{i:06d}.h5"),
                       fingerprint(settings, fp, efp),
                       inputs={"spectra": s["path"], "embeddings": s["emb_path"]})
             for i, (s, fp, efp) in enumerate(zip(shards, fps, emb_fps, strict=True))]
    return {"tasks": tasks, "selection": selection, "routing": routing, "digests": digests,
            "settings_hash": settings, "calibration": calib}


def _ood_settings(ood: dict[str, Any], embeddings: str | None,
                  calibration_meta: dict[str, Any]) -> dict[str, Any]:
    """The out-of-domain settings of :func:`specbridge.inference.ood.ood_flags`: the score
    and embedding-distance thresholds, the percentile, z_max and where the thresholds come
    from ('source'). They are the DESI domain's (both at the percentile of the labelled DESI
    calibration stars' scores and distances at which 100 - percentile % of them are above
    either, the training and validation splits' or, where the SpecFormer saw the training
    split, the validation split's,
    'joint_percentile', written by evaluate into the calibration table's meta) when the
    calibration was made for the configured percentile; else each the configured percentile
    of the held-out LAMOST spectra's (from the embedding index); None without either."""
    pct = ood["percentile"]
    base = {"percentile": pct, "z_max": ood["z_max"]}
    if (calibration_meta.get("ood_threshold") is not None and embeddings
            and float(calibration_meta.get("ood_percentile", -1)) == float(pct)):
        dt = calibration_meta.get("ood_distance_threshold")
        return {**base, "threshold": float(calibration_meta["ood_threshold"]),
                "distance_threshold": None if dt is None else float(dt),
                "joint_percentile": float(calibration_meta.get("ood_joint_percentile", pct)),
                "source": f"DESI {calibration_meta.get('ood_calibration_splits', 'val')}"}
    thresholds: dict[str, float | None] = {"threshold": None, "distance_threshold": None}
    if embeddings:
        from specbridge.inference.ood import score_threshold
        from specbridge.io.shards import index_attrs

        attrs = index_attrs(embeddings)
        for key, name in (("threshold", "ood_score_quantiles"),
                          ("distance_threshold", "ood_distance_quantiles")):
            q = json.loads(attrs.get(name, "[]"))
            if q:
                thresholds[key] = score_threshold(q, pct)
    return {**base, **thresholds, "source": "held-out LAMOST"}


def run(cfg: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
        comm: Any = None, *, force: bool = False, part: tuple[int, int] | None = None,
        merge: list[str] | None = None) -> int:
    """Predict every spectrum of ``inputs['spectra']`` (and ``inputs['embeddings']``) with the
    candidates ``inputs['checkpoints']``, their errors recalibrated by
    ``inputs['calibration']`` (optional), routed by ``inputs['selection']``; writes
    ``outputs['index']`` and its ``shards/`` (beside the index).

    As a job array over shard ranges: ``part`` = (k, n) computes only part k of n
    (:func:`~specbridge.parallel.executor.part_of`) and writes ``outputs['index']`` as that
    part's partial index; ``merge`` (the n partial indexes) then writes the whole index from
    their shards, computing nothing. The shards' fingerprints are the same either way, so a
    rerun in the other mode reuses them."""
    import time

    from specbridge.config import config_hash

    full_hash = config_hash(cfg)  # provenance of the whole resolved config
    cfg = declared(cfg, CONFIG_SECTIONS)
    log = rank0_logger("specbridge.infer", comm)
    t0 = time.monotonic()
    out = Path(outputs["index"])
    p = bcast_from_rank0(comm, lambda: plan(cfg, inputs, out.parent / "shards"))
    if merge is not None:
        from specbridge.parallel.executor import merge_parts

        merge_parts(ShardJob("infer", p["tasks"], _no_compute, out,
                             _index_attrs(p, inputs, full_hash, p["tasks"])), merge, log)
        return 0
    if part is not None:
        from specbridge.parallel.executor import part_of

        k, n = part
        p = {**p, "tasks": part_of(p["tasks"], k, n)}
        log.info("part %d of %d: shards %s", k, n,
                 f"{p['tasks'][0].number}-{p['tasks'][-1].number}" if p["tasks"] else "none")
    return run_or_abort(comm, log, _run, cfg, inputs, out, p, comm, log, force, t0, full_hash)


def _no_compute(task: ShardTask) -> ShardResult:
    raise AssertionError("merging parts computes nothing")


def _index_attrs(p: dict[str, Any], inputs: dict[str, Any], full_hash: str,
                 tasks: list[ShardTask], names: list[str] | None = None,
                 labels: list[str] | None = None) -> dict[str, Any]:
    """The prediction index's attributes (candidates and labels from the checkpoints' order
    in ``p`` where not given)."""
    if names is None or labels is None:
        from specbridge.inference.predict import load_candidates

        cands = load_candidates(inputs["checkpoints"])
        names, labels = [c.name for c in cands], cands[0].labels
    return {"labels": json.dumps(labels), "candidates": json.dumps(names),
            "checkpoints": json.dumps({n: p["digests"][str(c)] for n, c in
                                       zip(names, inputs["checkpoints"], strict=True)}),
            "routing": json.dumps(p["routing"], default=str),
            "settings_hash": p["settings_hash"], "config_hash": full_hash,
            "spectra": str(inputs["spectra"]), "n_spectra": sum(t.n for t in tasks)}


def _run(cfg, inputs, out: Path, p, comm, log, force: bool, t0: float, full_hash: str) -> int:
    import time

    import torch

    from specbridge.inference.predict import load_candidates, predict_shard

    _, size = comm_rank_size(comm)
    from specbridge.parallel.ddp import inference_device

    local_rank, local_size = node_rank_size(comm)
    torch.set_num_threads(cores_per_rank(local_size))
    device = inference_device(local_rank)
    cands = load_candidates(inputs["checkpoints"], device)
    labels = cands[0].labels
    names = [c.name for c in cands]
    tasks = p["tasks"]
    log.info("%d candidates, %d spectra in %d shards over %d ranks (%s)", len(cands),
             sum(t.n for t in tasks), len(tasks), size, device)
    log.info("router %s (%s), %d pass(es), blend %s; errors %s", p["routing"]["router"],
             p["routing"]["router_setting"], p["routing"]["router_passes"],
             p["routing"]["blend"], "recalibrated" if p["calibration"] else
             "as predicted (no --calibration)")

    def compute(task: ShardTask) -> ShardResult:
        shard = {"path": task.inputs["spectra"], "emb_path": task.inputs["embeddings"],
                 "first_row": task.first_row, "n": task.n}
        arrays, counts = predict_shard(cands, shard, labels, p["selection"], p["routing"],
                                       cfg["inference"]["batch_size"], p["calibration"],
                                       device)
        return ShardResult(arrays, counts=counts)

    job = ShardJob("infer", tasks, compute, out,
                   _index_attrs(p, inputs, full_hash, tasks, names, labels), force=force)
    s = run_shards(job, comm, log)
    if s is not None:
        log.info("wrote %s: %d shards (%d skipped as complete); %d spectra x %d candidates in "
                 "%.1f s (%.0f spectra/s per rank in the prediction loop)", out, s.n_shards,
                 s.skipped, s.n_computed, len(cands), time.monotonic() - t0,
                 s.n_computed / size / s.compute_s)
        for reason, c in s.failures.items():
            log.info("  no prediction: %-50s %d", reason, c)
    return 0
