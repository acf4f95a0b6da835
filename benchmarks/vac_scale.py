"""The VAC at survey scale: peak memory and throughput of ``specbridge vac`` against the
number of rows.

Fabricates, under ``--workdir``, a DESI manifest (the columns the VAC reads, FILE at its full
256 bytes) and prediction shards (as ``specbridge infer`` writes them, ``--candidates``
candidates x 4 labels) for N spectra, then runs ``specbridge vac`` (the catalogue of every
observation, its HDF5 twin and the DESI layout) under ``/usr/bin/time`` and prints peak RSS,
rows/s and disk. The synthetic survey: positions uniform over a footprint of N / 250 HEALPix
pixels at nside 64 (≈ 250 spectra per pixel, about DESI DR1's stellar density), files of 500
consecutive rows each of one SURVEY-PROGRAM (main-bright 70 %, main-backup 20 %, sv3-bright
10 %), 15 % of the rows repeating an earlier TARGETID, 2 % fatal in the manifest (no
prediction), shards of 100,000 rows.

    python benchmarks/vac_scale.py --n 1000000 --workdir /tmp/vac_scale
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fitsio
import h5py
import numpy as np

from specbridge import flags
from specbridge.io.shards import write_index

LABELS = ["teff", "logg", "feh", "alpha_fe"]
PROGRAMS = [("main", "bright", 0.7), ("main", "backup", 0.2), ("sv3", "bright", 0.1)]
MANIFEST_DTYPE = [("SPECID", "i8"), ("DESI_SURVEY", "S8"), ("DESI_PROGRAM", "S8"),
                  ("RA", "f8"), ("DEC", "f8"), ("GAIA_ID", "i8"), ("OBJTYPE", "S8"),
                  ("Z", "f8"), ("ZERR", "f8"), ("ZWARN", "i8"), ("CLASS", "S8"), ("ROW", "i4"),
                  ("FLAGS", "i8"), ("FLAG_REASON", "S128"), ("FILE", "S256")]
SHARD_ROWS = 100_000
PER_PIXEL = 250


def _rows(n: int, a: int, b: int, seed: int) -> np.ndarray:
    """Manifest rows [a, b) of the synthetic survey (deterministic per chunk)."""
    rng = np.random.default_rng([seed, a])
    c = b - a
    t = np.zeros(c, MANIFEST_DTYPE)
    tid = 39_600_000_000_000_000 + np.arange(a, b)
    rep = (rng.random(c) < 0.15) & (np.arange(a, b) > 0)
    tid[rep] = 39_600_000_000_000_000 + rng.integers(0, np.maximum(np.arange(a, b)[rep], 1))
    t["SPECID"] = tid
    file_no = np.arange(a, b) // 500  # files of 500 consecutive rows, one program each
    k = np.random.default_rng([seed, 7]).choice(len(PROGRAMS), n // 500 + 1,
                                                p=[p[2] for p in PROGRAMS])[file_no]
    t["DESI_SURVEY"] = np.array([p[0] for p in PROGRAMS], "S8")[k]
    t["DESI_PROGRAM"] = np.array([p[1] for p in PROGRAMS], "S8")[k]
    frac = min(1.0, n / PER_PIXEL / 49_152)  # footprint: a fraction of the sky in RA
    t["RA"] = rng.uniform(0, 360 * frac, c)
    t["DEC"] = np.degrees(np.arcsin(rng.uniform(-1, 1, c)))
    t["GAIA_ID"] = rng.integers(1, 2**60, c)
    t["OBJTYPE"], t["CLASS"] = b"TGT", b"STAR"
    t["Z"], t["ZERR"], t["ZWARN"] = rng.normal(0, 1e-4, c), 1e-5, 0
    t["ROW"] = np.arange(a, b) % 500
    fatal = rng.random(c) < 0.02
    t["FLAGS"] = np.where(fatal, flags.flag("NO_VALID_PIXELS"), flags.flag("NO_LABEL"))
    t["FLAG_REASON"] = np.where(fatal, b"no pixel with ivar > 0 and finite flux", b"")
    names = np.char.add(np.char.add(np.char.add(b"/global/cfs/cdirs/desi/spectro/redux/iron/"
                                                b"healpix/coadd-", t["DESI_SURVEY"]), b"-"),
                        t["DESI_PROGRAM"])
    t["FILE"] = np.char.add(np.char.add(names, b"-"), np.char.add(file_no.astype("S8"),
                                                                   b".fits"))
    return t


def fabricate(n: int, workdir: Path, n_cands: int, seed: int = 1) -> tuple[Path, Path]:
    """Write the manifest and the prediction shards + index of ``n`` rows; returns their
    paths. Chunked: memory does not grow with ``n``."""
    manifest = workdir / "desi.fits"
    pred = workdir / "inf" / "index.h5"
    (workdir / "inf" / "shards").mkdir(parents=True, exist_ok=True)
    cands = [f"mlp_{s}" for s in ("zeroshot", "adapter", "lora", "full", "a", "b", "c", "d")]
    cands = cands[:n_cands]
    shards = []
    with fitsio.FITS(str(manifest), "rw", clobber=True) as f:
        f.write(None)
        f.create_table_hdu(dtype=np.dtype(MANIFEST_DTYPE), extname="MANIFEST")
        for a in range(0, n, SHARD_ROWS):
            b = min(n, a + SHARD_ROWS)
            t = _rows(n, a, b, seed)
            f[-1].append(t)
            rng = np.random.default_rng([seed, a, 1])
            ok = np.flatnonzero(~flags.is_fatal(t["FLAGS"]))
            m, L, K = ok.size, len(LABELS), len(cands)
            path = workdir / "inf" / "shards" / f"pred-{a // SHARD_ROWS:05d}.h5"
            base = np.array([5000.0, 3.0, -0.5, 0.1], np.float32)
            cv = (base + rng.normal(0, 0.1, (K, m, L))).astype(np.float32)
            with h5py.File(path, "w") as h:
                h["manifest_row"] = (a + ok).astype(np.int64)
                h["specid"] = t["SPECID"][ok]
                h["flags"] = t["FLAGS"][ok]
                h["snr"] = rng.uniform(1, 100, m).astype(np.float32)
                h["ood_score"] = rng.normal(0, 1, m).astype(np.float32)
                h["value"] = cv[0]
                h["error"] = np.full((m, L), 0.1, np.float32)
                h["regime"] = rng.integers(0, 2, m).astype(np.int16)
                h["served"] = rng.integers(0, K, (m, L))
                h["candidate_value"] = cv
                h["candidate_error"] = np.full((K, m, L), 0.1, np.float32)
            shards.append({"path": path, "first_row": a, "n": m})
    routing = {"router": cands[0], "threshold": -1.0, "blend_width": 0.0, "blend": "hard",
               "selection": [[[lab, r], cands[0]] for lab in LABELS
                             for r in ("metal_poor", "metal_rich")]}
    write_index(pred, shards, {"labels": json.dumps(LABELS), "candidates": json.dumps(cands),
                               "routing": json.dumps(routing), "settings_hash": "synthetic",
                               "checkpoints": json.dumps({c: "0" * 64 for c in cands})})
    return manifest, pred


def keys_at_scale(n: int, block_rows: int = 250_000, seed: int = 1) -> None:
    """The part of the VAC whose memory grows with N, alone: the keys of N rows (as
    vac.stream.scan_keys holds them), PRIMARY and the DESI order (vac.stream.output_order),
    with this process's peak RSS. Arrays are made in memory; no files."""
    import resource

    from specbridge.vac.catalogue import primary_mask
    from specbridge.vac.stream import output_order

    rng = np.random.default_rng(seed)
    t0 = time.process_time()
    specid = 39_600_000_000_000_000 + np.arange(n)
    rep = rng.random(n) < 0.15
    specid[rep] = specid[rng.integers(0, n, int(rep.sum()))]
    sp = rng.choice(3, n, p=[p[2] for p in PROGRAMS]).astype(np.int16)
    healpix = rng.integers(0, max(1, n // PER_PIXEL), n).astype(np.int32)
    shard, pos = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    usable = rng.random(n) > 0.02
    snr = rng.uniform(1, 100, n).astype(np.float32)
    primary = primary_mask(specid, usable, snr)
    del usable, snr
    out_pos, sp_sorted, file_key, bounds = output_order(sp, healpix, block_rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(a.nbytes for a in (specid, sp, healpix, shard, pos, primary, out_pos,
                                  sp_sorted, file_key)) / 1e6
    print(f"keys of N = {n:,}: {time.process_time() - t0:.1f} s CPU, peak RSS {peak:,.0f} MB "
          f"({int(primary.sum()):,} PRIMARY, {bounds.size - 1} blocks; arrays kept: "
          f"{kept:,.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="spectra (rows)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vac_scale"))
    ap.add_argument("--candidates", type=int, default=4, help="candidates (at most 8)")
    ap.add_argument("--config", default="config.yaml", help="config (its vac section)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--ranks", type=int, default=1,
                    help="MPI ranks (mpiexec -n RANKS); peak memory is reported per rank")
    ap.add_argument("--no-tree", action="store_true",
                    help="the catalogue of every observation and its HDF5 twin only (no "
                         "per-HEALPix files nor SURVEY-PROGRAM catalogues)")
    ap.add_argument("--keys-only", action="store_true",
                    help="measure only the part whose memory grows with N (no files)")
    args = ap.parse_args(argv)
    if args.keys_only:
        keys_at_scale(args.n)
        return 0
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    t0 = time.monotonic()
    manifest, pred = fabricate(args.n, args.workdir, args.candidates)
    t_fab = time.monotonic() - t0
    inputs = sum(p.stat().st_size for p in args.workdir.rglob("*") if p.is_file())
    out = args.workdir / "vac"
    launcher = ["mpiexec", "-n", str(args.ranks)] if args.ranks > 1 else []
    cmd = [*launcher, "/usr/bin/time", "-f", "peak %M kB cpu %U %S s", "specbridge", "vac",
           "--config",
           args.config, "--predictions", str(pred), "--manifest", str(manifest), "--fits",
           str(out / "vac-v1.fits"), "--hdf5", str(out / "vac-v1.h5")]
    if not args.no_tree:
        cmd += ["--tree", str(out / "v1")]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode:
        print(r.stderr[-3000:])
        return 1
    usage = re.findall(r"peak (\d+) kB cpu ([\d.]+) ([\d.]+) s", r.stderr)
    peaks = [int(u[0]) / 1024 for u in usage]
    peak_mb, cpu = max(peaks), sum(float(u[1]) + float(u[2]) for u in usage)
    for line in r.stderr.splitlines():
        if "rows (one per" in line:
            print("vac log:", line.split("] ", 1)[-1].split(": ", 1)[-1])
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"N = {args.n:,} rows, {args.candidates} candidates: fabricated in {t_fab:.0f} s "
          f"({inputs / 1e9:.2f} GB of inputs)")
    print(f"vac: {wall:.1f} s wall ({args.n / wall:,.0f} rows/s), {cpu:.1f} s CPU "
          f"({args.n / cpu:,.0f} rows per CPU-second), peak RSS {peak_mb:,.0f} MB "
          f"(per rank: {', '.join(f'{p:,.0f}' for p in peaks)}); "
          f"{len(files):,} files, {size / 1e9:.2f} GB ({size / args.n:.0f} bytes/row)")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
