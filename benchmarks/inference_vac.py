"""Inference and VAC benchmarks on the candidates of a finished run (default: results/).

1. Per-core prediction throughput of each candidate kind (spectrum MLP on 1462 pixels, embedding
   MLP on SpecFormer embeddings) and of all candidates + routing on one shard, 1 thread.
2. A survey-scale run: the run's preprocessed DESI shards are replicated under distinct
   TARGETIDs to ``--n`` spectra (with a manifest to match), then ``specbridge infer`` over
   ``--ranks`` MPI ranks and ``specbridge vac`` (merged FITS + HDF5, and the per-HEALPix files)
   are timed.

    python benchmarks/inference_vac.py [--results results] [--n 1000000] [--ranks 2]

Prints a table; the figures recorded in docs/benchmarks.md came from this script.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fitsio
import h5py
import numpy as np


def per_core_throughput(results: Path) -> None:
    import torch

    from specbridge.inference.predict import (
        load_candidates,
        paired_shards,
        predict_all,
        read_inputs,
    )

    torch.set_num_threads(1)
    cks = sorted((results / "models").glob("*/finetuned_*.pt"))
    cands = load_candidates(cks)
    shards = paired_shards(results / "preprocessed" / "desi" / "index.h5",
                           results / "embeddings" / "desi" / "index.h5")
    d = read_inputs(shards[0], {"flux", "embedding", "spectrum"})
    n = int(d["usable"].sum())
    print(f"one shard: {d['specid'].size} spectra, {n} usable; 1 thread")
    for kind in ("mlp_zeroshot", "mlp_adapter", "emb_mlp_lora", "specformer_lora"):
        c = next(c for c in cands if c.name == kind)
        predict_all([c], d, 1024)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            predict_all([c], d, 1024)
        dt = (time.perf_counter() - t0) / 3
        print(f"  {kind:<14} {n / dt:10.0f} spectra/s per core")
    from specbridge.inference.routing import route

    t0 = time.perf_counter()
    preds = predict_all(cands, d, 1024)
    t1 = time.perf_counter()
    names = [c.name for c in cands]
    sel = {(lab, rg): names[0] for lab in cands[0].labels
           for rg in ("metal_poor", "metal_rich")}
    route(preds, names, cands[0].labels, sel, names[0], -1.0)
    t2 = time.perf_counter()
    print(f"  all {len(cands)} candidates {n / (t1 - t0):10.0f} spectra/s per core; routing "
          f"{n / (t2 - t1):.0f} spectra/s")


def replicate(results: Path, work: Path, n_target: int) -> tuple[Path, Path, Path]:
    """Shards, embedding shards and a manifest of ``n_target`` spectra under new IDs."""
    from specbridge.io.shards import (
        ROW_FIELDS,
        read_index,
        read_shard,
        write_embedding_shard,
        write_index,
        write_shard,
    )

    src = read_index(results / "preprocessed" / "desi" / "index.h5")
    esrc = read_index(results / "embeddings" / "desi" / "index.h5")
    man = fitsio.read(str(results / "manifest" / "desi.fits"), ext="MANIFEST")
    n_src = len(man)
    data = [read_shard(s["path"], ("flux", "ivar", "mask") + ROW_FIELDS) for s in src]
    emb = [read_shard(s["path"], ("embedding",))["embedding"] for s in esrc]
    spec, embd = work / "spectra", work / "embeddings"
    shards, eshards = [], []
    row = 0
    copy = 0
    t0 = time.monotonic()
    while row < n_target:
        for k, d in enumerate(data):
            if row >= n_target:
                break
            m = min(d["specid"].size, n_target - row)
            arr = {key: v[:m] for key, v in d.items()}
            arr["specid"] = d["specid"][:m] + (copy + 1) * 10**9
            arr["manifest_row"] = np.arange(row, row + m)
            i = len(shards)
            p = spec / "shards" / f"shard-{i:06d}.h5"
            write_shard(p, arr, {"first_row": row, "settings_hash": "bench"})
            e = {"embedding": emb[k][:m], **{f: arr[f] for f in ROW_FIELDS}}
            ep = embd / "shards" / f"emb-{i:06d}.h5"
            write_embedding_shard(ep, e, {"first_row": row, "settings_hash": "bench"})
            shards.append({"path": str(p), "first_row": row, "n": m})
            eshards.append({"path": str(ep), "first_row": row, "n": m})
            row += m
        copy += 1
    write_index(spec / "index.h5", shards, {"n_spectra": row})
    write_index(embd / "index.h5", eshards, {"dim": emb[0].shape[1]})
    reps = int(np.ceil(n_target / n_src))
    big = np.tile(man, reps)[:n_target]
    big["SPECID"] = np.concatenate([man["SPECID"] + (c + 1) * 10**9
                                    for c in range(reps)])[:n_target]
    with fitsio.FITS(str(work / "desi.fits"), "rw", clobber=True) as f:
        f.write(big, extname="MANIFEST")
    print(f"replicated {n_src} spectra to {row} in {time.monotonic() - t0:.0f} s "
          f"({len(shards)} shards)")
    return spec / "index.h5", embd / "index.h5", work / "desi.fits"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/specbridge-bench-infer"))
    ap.add_argument("--keep", action="store_true", help="keep the replicated shards")
    ap.add_argument("--exclude", nargs="*", default=[],
                    help="candidates left out of the survey-scale run (e.g. specformer_lora)")
    args = ap.parse_args(argv)
    res = args.results
    per_core_throughput(res)
    shutil.rmtree(args.workdir, ignore_errors=True)
    spectra, embs, manifest = replicate(res, args.workdir, args.n)
    cks = [str(p) for p in sorted((res / "models").glob("*/finetuned_*.pt"))
           if f"{p.parent.name}_{p.stem.split('_', 1)[1]}" not in args.exclude]
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    cfg = str(res / "config" / "resolved.yaml")
    out = args.workdir / "inference" / "index.h5"
    cmd = [str(bindir / "mpiexec"), "-n", str(args.ranks), "specbridge", "infer", "--config",
           cfg, "--checkpoints", *cks, "--selection",
           str(res / "evaluation" / "selection.ecsv"), "--spectra", str(spectra),
           "--embeddings", str(embs), "--output", str(out)]
    if (res / "evaluation" / "calibration.ecsv").exists():  # the recalibrated errors
        cmd += ["--calibration", str(res / "evaluation" / "calibration.ecsv")]
    t0 = time.monotonic()
    sel = str(res / "evaluation" / "selection.ecsv")
    if args.exclude:  # route among the candidates kept: the selection made without the others
        from astropy.table import Table

        t = Table.read(sel)
        names = {f"{Path(c).parent.name}_{Path(c).stem.split('_', 1)[1]}" for c in cks}
        if not set(t["candidate"]) <= names:
            raise SystemExit(f"the selection uses an excluded candidate: {set(t['candidate'])}")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    t_inf = time.monotonic() - t0
    if r.returncode:
        print(r.stderr[-3000:])
        return 1
    print(f"infer: {args.n} spectra x {len(cks)} candidates on {args.ranks} ranks: "
          f"{t_inf:.1f} s ({args.n / t_inf:.0f} spectra/s, {args.n / t_inf / args.ranks:.0f} "
          "per rank)")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(f"infer rerun with every shard complete: {time.monotonic() - t0:.1f} s")
    vac = args.workdir / "vac"
    vcmd = ["specbridge", "vac", "--config", cfg, "--predictions", str(out), "--manifest",
            str(manifest), "--fits", str(vac / "vac.fits"), "--hdf5", str(vac / "vac.h5"),
            "--tree", str(vac / "v1")]
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "peak %M kB", *vcmd], capture_output=True,
                       text=True, env=env)
    t_vac = time.monotonic() - t0
    if r.returncode:
        print(r.stderr[-3000:])
        return 1
    for line in r.stderr.splitlines():
        if "rows (one per" in line or "peak" in line:
            print("vac:", line.split(": ", 1)[-1])
    with h5py.File(vac / "vac.h5") as h:
        assert h["PARAMS/TARGETID"].shape[0] == args.n
    size = sum(p.stat().st_size for p in vac.rglob("*") if p.is_file()) / 1e9
    print(f"vac: {t_vac:.1f} s in all; {size:.2f} GB written; "
          f"{len(list((vac / 'v1' / 'healpix').rglob('*.fits')))} HEALPix files")
    print(f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          " MB")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
