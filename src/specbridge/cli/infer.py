"""``specbridge infer``: every candidate's predictions for every preprocessed DESI spectrum,
routed by regime, as one HDF5 prediction shard per spectra shard. One MPI job in the desispec
manner: rank 0 reads the selection and the shard index and broadcasts them; shards are spread
over the ranks weighted by their size; each rank writes its shards atomically and skips those
already complete for the same checkpoints, selection and routing; rank 0 writes the index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from specbridge import __version__, flags
from specbridge.cli._common import CLIError, add_config_argument, config_from_args
from specbridge.config import ConfigError, config_hash
from specbridge.digest import sha256
from specbridge.faults import kill_point
from specbridge.io.shards import shard_is_complete, write_arrays, write_index
from specbridge.parallel.mpi import (
    bcast_from_rank0,
    comm_rank_size,
    cores_per_rank,
    gather_error_counts,
    get_comm,
    rank0_logger,
    ranks_on_node,
    run_or_abort,
)
from specbridge.parallel.partition import weighted_partition
from specbridge.progress import Progress


def _prepare(args, cfg) -> dict[str, Any]:
    """What every rank needs (read on rank 0): shards, selection, digests."""
    from astropy.table import Table

    from specbridge.evaluation.selection import selection_mapping
    from specbridge.inference.predict import paired_shards

    try:
        sel_table = Table.read(args.selection, format="ascii.ecsv")
        digests = {str(p): sha256(Path(p)) for p in args.checkpoints}
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the selection or the checkpoints: {exc}") from None
    try:
        shards = paired_shards(args.spectra, args.embeddings)
    except (OSError, KeyError, ValueError) as exc:
        raise CLIError(f"cannot read the spectra/embedding index: {exc}") from None
    inf = cfg["inference"]
    selection = selection_mapping(sel_table)
    routing = {"selection": sorted(selection.items()),
               "router": inf["router"], "threshold": cfg["evaluation"]["feh_threshold"],
               "blend_width": inf["blend_width"]}
    digest = hashlib.sha256(json.dumps({"checkpoints": sorted(digests.values()),
                                        "routing": routing, "version": __version__},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"shards": shards, "selection": selection, "routing": routing,
            "digests": digests, "settings_hash": digest}


def main(args: argparse.Namespace | list[str] | None = None, comm: Any = None) -> int:
    """Entry point (``specbridge infer``); ``comm`` defaults to MPI.COMM_WORLD under an MPI
    launcher, else no MPI."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="specbridge infer")
        _add_arguments(parser)
        args = parser.parse_args(args)
    comm = comm if comm is not None else get_comm()
    log = rank0_logger("specbridge.infer", comm)

    def prepare():
        cfg = config_from_args(args)
        return cfg, _prepare(args, cfg)

    payload, err = bcast_from_rank0(comm, prepare, (CLIError, ConfigError))
    if err is not None:
        raise CLIError(err)
    cfg, plan = payload
    return run_or_abort(comm, log, _run, args, comm, cfg, plan, log)


def predict_shard(cands, shard: dict[str, Any], labels: list[str], selection, routing,
                  batch_size: int) -> tuple[dict[str, np.ndarray], Counter]:
    """Arrays of one prediction shard and the count of spectra that got no prediction."""
    from specbridge.inference.predict import predict_all, read_inputs
    from specbridge.inference.routing import route

    d = read_inputs(shard, {c.feature for c in cands})
    preds = predict_all(cands, d, batch_size)
    names = [c.name for c in cands]
    r = route(preds, names, labels, selection, routing["router"], routing["threshold"],
              routing["blend_width"])
    fl = d["flags"].astype(np.int64)
    failed = ~np.isfinite(r.value).all(1) & ~flags.is_fatal(fl)
    fl[failed] |= flags.flag("PREDICTION_FAILED")
    counts = Counter({"no prediction (no usable pixels or non-finite input)": int(failed.sum())}
                     if failed.any() else {})
    arrays = {"specid": d["specid"], "manifest_row": d["manifest_row"], "flags": fl,
              "snr": d["snr"], "value": r.value.astype(np.float32),
              "error": r.error.astype(np.float32), "regime": r.regime, "served": r.served,
              "candidate_value": np.stack([preds[n][0] for n in names]).astype(np.float32),
              "candidate_error": np.stack([preds[n][1] for n in names]).astype(np.float32)}
    return arrays, counts


def _run(args, comm, cfg, plan, log) -> int:
    import torch

    from specbridge.inference.predict import load_candidates

    rank, size = comm_rank_size(comm)
    torch.set_num_threads(cores_per_rank(ranks_on_node(comm)))
    t0 = time.monotonic()
    cands = load_candidates(args.checkpoints)
    labels = cands[0].labels
    names = [c.name for c in cands]
    shards = plan["shards"]
    out = Path(args.output)
    (out.parent / "shards").mkdir(parents=True, exist_ok=True)
    mine = weighted_partition([s["n"] for s in shards], size)[rank]
    log.info("%d candidates, %d spectra in %d shards over %d ranks", len(cands),
             sum(s["n"] for s in shards), len(shards), size)
    progress = Progress("infer (rank 0)", log, unit="shards")
    counts: Counter = Counter()
    written, nspec, skipped, t_pred = [], 0, 0, 0.0
    for k, i in enumerate(mine):
        s = shards[i]
        path = out.parent / "shards" / f"pred-{i:06d}.h5"
        if args.force or not shard_is_complete(path, s["n"], plan["settings_hash"]):
            t1 = time.monotonic()
            arrays, c = predict_shard(cands, s, labels, plan["selection"], plan["routing"],
                                      cfg["inference"]["batch_size"])
            counts.update(c)
            write_arrays(path, arrays, {
                "settings_hash": plan["settings_hash"], "first_row": s["first_row"],
                "specbridge_version": __version__}, arrays["specid"].shape[0])
            t_pred += time.monotonic() - t1
            nspec += s["n"]
        else:
            skipped += 1
        written.append({"path": str(path), "first_row": s["first_row"], "n": s["n"]})
        progress(k + 1, len(mine))
        kill_point("infer", rank, k + 1)
    total = gather_error_counts(comm, counts)
    stats = (written, nspec, skipped, t_pred)
    everyone = comm.gather(stats, root=0) if comm is not None else [stats]
    if rank == 0:
        write_index(out, [w for e in everyone for w in e[0]], {
            "labels": json.dumps(labels), "candidates": json.dumps(names),
            "checkpoints": json.dumps({c.name: plan["digests"][c.path] for c in cands}),
            "routing": json.dumps(plan["routing"], default=str),
            "settings_hash": plan["settings_hash"], "config_hash": config_hash(cfg),
            "spectra": str(args.spectra), "specbridge_version": __version__,
            "n_spectra": sum(s["n"] for s in shards), "failures": json.dumps(total)})
        done = sum(e[1] for e in everyone)
        tp = max(e[3] for e in everyone) or 1e-9
        dt = time.monotonic() - t0
        log.info("wrote %s: %d shards (%d skipped as complete); %d spectra x %d candidates in "
                 "%.1f s (%.0f spectra/s per rank in the prediction loop)", out, len(shards),
                 sum(e[2] for e in everyone), done, len(cands), dt, done / size / tp)
        for reason, c in (total or {}).items():
            log.info("  no prediction: %-50s %d", reason, c)
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--checkpoints", nargs="+", required=True, help="candidate checkpoints")
    p.add_argument("--selection", required=True, help="selection table (ECSV) of evaluate")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed DESI spectra")
    p.add_argument("--embeddings", help="index HDF5 of DESI embeddings (embedding candidates)")
    p.add_argument("--output", required=True,
                   help="prediction index HDF5 to write; shards go to shards/ beside it")
    p.add_argument("--force", action="store_true", help="recompute shards even if complete")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="sharded predictions of every candidate (MPI)",
                       description="Every candidate's predictions for all DESI spectra and "
                                   "the regime-routed values, one HDF5 shard per spectra "
                                   "shard; a rerun computes only missing or stale shards.")
    _add_arguments(p)
    p.set_defaults(func=main)
