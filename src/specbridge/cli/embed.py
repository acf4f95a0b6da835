"""``specbridge embed``: SpecFormer embeddings of preprocessed spectra, as HDF5 shards.

Each spectra shard gives one embedding shard (same rows, same order: nothing is lost; spectra
without usable pixels get NaN embeddings). The embedding is the mean over the output patch
tokens, standardised with the mean and std stored in the SpecFormer checkpoint (computed on its
LAMOST training set). MPI ranks share the shards; a rerun skips complete shards.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from specbridge import __version__, flags
from specbridge.cli._common import CLIError, add_config_argument

log = logging.getLogger("specbridge.embed")


def run(args: argparse.Namespace) -> int:
    import torch

    from specbridge.io.shards import (
        ROW_FIELDS,
        read_index,
        read_shard,
        shard_is_complete,
        write_embedding_shard,
        write_index,
    )
    from specbridge.models import SpecFormer
    from specbridge.parallel.mpi import comm_rank_size, cores_per_rank, get_comm, ranks_on_node
    from specbridge.parallel.partition import weighted_partition
    from specbridge.progress import Progress

    comm = get_comm()
    rank, size = comm_rank_size(comm)
    if rank:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        ck = torch.load(args.model, map_location="cpu", weights_only=False)
        shards = read_index(args.spectra)
    except (OSError, KeyError) as exc:
        raise CLIError(f"cannot read {args.model} or {args.spectra}: {exc}") from None
    ex = ck["extra"]
    if ex.get("model") != "specformer" or "embed_mean" not in ex:
        raise CLIError(f"{args.model} is not a SpecFormer checkpoint with embedding statistics")
    torch.set_num_threads(cores_per_rank(ranks_on_node(comm)))
    model = SpecFormer(ex["npix"], ex["patch_size"], ex["patch_stride"], ex["d_model"],
                       ex["n_layers"], ex["n_heads"])
    model.load_state_dict(ck["model"])
    model.eval()
    mean, std = np.asarray(ex["embed_mean"]), np.asarray(ex["embed_std"])
    digest = f"{Path(args.model).stat().st_size}-{Path(args.model).stat().st_mtime_ns}"
    out = Path(args.output)
    mine = weighted_partition([s["n"] for s in shards], size)[rank]
    progress = Progress("embed (rank 0)", log, unit="shards")
    written = []
    for k, i in enumerate(mine):
        s = shards[i]
        path = out.parent / "shards" / f"emb-{i:06d}.h5"
        if not shard_is_complete(path, s["n"], digest):
            d = read_shard(s["path"], ("flux", "ivar") + ROW_FIELDS)
            emb = np.full((s["n"], ex["d_model"]), np.nan, np.float32)
            ok = ~flags.is_fatal(d["flags"]) & ((d["ivar"] > 0).sum(1) > 0)
            idx = np.flatnonzero(ok)
            with torch.no_grad():
                for a in range(0, idx.size, 256):
                    j = idx[a:a + 256]
                    e = model.embed(torch.from_numpy(d["flux"][j]),
                                    torch.from_numpy(d["ivar"][j])).numpy()
                    emb[j] = (e - mean) / std
            write_embedding_shard(path, {"embedding": emb, **{f: d[f] for f in ROW_FIELDS}},
                                  {"settings_hash": digest, "first_row": s["first_row"],
                                   "specbridge_version": __version__})
        written.append({"path": str(path), "first_row": s["first_row"], "n": s["n"]})
        progress(k + 1, len(mine))
    everyone = comm.gather(written, root=0) if comm is not None else [written]
    if rank == 0:
        write_index(out, [w for part in everyone for w in part],
                    {"dim": int(ex["d_model"]), "spectra": str(args.spectra),
                     "specformer": str(args.model), "specbridge_version": __version__})
        log.info("wrote %s: %d embedding shards", out, len(shards))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="SpecFormer embeddings of preprocessed spectra",
                       description="Mean over the SpecFormer's output tokens, standardised "
                                   "with the statistics stored in its checkpoint; one "
                                   "embedding shard per spectra shard (MPI over shards).")
    add_config_argument(p)
    p.add_argument("--model", required=True, help="SpecFormer checkpoint")
    p.add_argument("--spectra", required=True, help="index HDF5 of preprocessed spectra")
    p.add_argument("--output", required=True, help="index HDF5 of embeddings to write")
    p.set_defaults(func=run)
