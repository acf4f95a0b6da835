"""Manifest scan rate over >= 10,000 files, built from the real files in ../shared/data.

    python benchmarks/manifest_scan.py [--n-files 10000] [--shared ../shared/data]
    python benchmarks/manifest_scan.py --ranks 1 2 [--n-files 4000]   # the MPI stage
    python benchmarks/manifest_scan.py --ranks 2 --surveys desi --n-files 20000 \
        --desi-list MOCK/desi_files.txt --redshifts-from MOCK/redrock_files.txt \
        --labels MOCK/apogee_allstar.fits     # 10^7 rows from the mock's 500-row coadds

Without ``--ranks``: build_manifest in this process. With ``--ranks``: ``mpiexec -n R
specbridge manifest --files-from LIST`` (the stage as the rule runs it, embedded default config)
for each R; its log gives the scan time (the files spread over the ranks, gathered on rank 0),
the wall time includes start-up, the selection, cross-match and the write.

Each survey's file set is N symbolic links cycling over the real files (LAMOST: 301 spectra in
both layouts, gzipped and plain; DESI: the 7 coadd/spectra files, 1-25 spectra each), so the
scan reads N distinct paths. The page cache is warm after the first pass over the real files:
the figures are the CPU cost of scanning (open, header, B-arm/spectrum read, checks), the part
specbridge controls, not the filesystem's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from specbridge.io.manifest import build_manifest


def linked_files(sources: list[Path], n: int, folder: Path) -> list[str]:
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:06d}_{src.name}"
        dst.symlink_to(src.resolve())
        out.append(str(dst))
    return out


def run_stage(survey: str, files: list[str], ranks: int, folder: Path,
              extra: list[str] | None = None) -> tuple[float, float, int, str]:
    """(wall s, scan s, spectra, peak MB per rank) of ``mpiexec -n ranks specbridge
    manifest`` over ``files`` (``extra``: more arguments, e.g. redshifts and labels)."""
    listing = folder / f"{survey}_files.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    config = Path(__file__).resolve().parents[1] / "config.yaml"
    out = folder / f"{survey}_{ranks}.fits"
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), "specbridge", "manifest",
           "--config", str(config), "--survey", survey, "--files-from", str(listing),
           "--output", str(out), *(extra or [])]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    scan = float(re.search(r"\(scan ([0-9.]+) s", r.stderr).group(1))
    spectra = int(re.search(r"files -> (\d+) spectra", r.stderr).group(1))
    peaks = re.search(r"peak memory per rank: ([0-9, ]+) MB", r.stderr).group(1)
    out.unlink(missing_ok=True)
    return wall, scan, spectra, peaks


def warmed_sets(lamost: list[Path], desi: list[Path], n_files: int,
                surveys: tuple[str, ...] = ("lamost", "desi")):
    """Per survey, (survey, n_files links cycling over its real files, their folder) in a
    temporary folder, after one untimed pass over the real files (page cache, imports)."""
    with tempfile.TemporaryDirectory() as tmp:
        for survey, sources in (("lamost", lamost), ("desi", desi)):
            if survey not in surveys:
                continue
            d = Path(tmp) / survey
            d.mkdir()
            files = linked_files(sources, n_files, d)
            build_manifest(survey, files[: len(sources)])
            yield survey, files, d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=10000)
    ap.add_argument("--shared", type=Path,
                    default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--ranks", type=int, nargs="+",
                    help="run the MPI stage with these rank counts instead")
    ap.add_argument("--surveys", nargs="+", choices=["lamost", "desi"],
                    default=["lamost", "desi"])
    ap.add_argument("--desi-list", type=Path,
                    help="cycle over the DESI files listed here (e.g. a mock's 500-spectrum "
                         "coadds) instead of the real ones")
    ap.add_argument("--redshifts-from", type=Path, help="redrock file list (with --ranks)")
    ap.add_argument("--labels", type=Path, help="label catalogue (with --ranks)")
    args = ap.parse_args()
    lamost = sorted(p for p in (args.shared / "lamost").glob("*/*") if ".fits" in p.name)
    desi = sorted(p for p in (args.shared / "desi").glob("*.fits") if "redrock" not in p.name)
    if args.desi_list:
        desi = [Path(x) for x in args.desi_list.read_text().split()]
    extra = []
    if args.redshifts_from:
        extra += ["--redshifts-from", str(args.redshifts_from)]
    if args.labels:
        extra += ["--labels", str(args.labels)]
    if args.ranks:
        print(f"{'survey':8s} {'files':>7s} {'spectra':>10s} {'ranks':>5s} {'wall s':>7s} "
              f"{'scan s':>7s} {'files/s':>8s} {'per rank':>8s} {'spectra/s':>9s}  peak MB "
              "per rank")
        for survey, files, d in warmed_sets(lamost, desi, args.n_files, tuple(args.surveys)):
            for n in args.ranks:
                wall, scan, nspec, peaks = run_stage(survey, files, n, d, extra)
                print(f"{survey:8s} {len(files):7d} {nspec:10d} {n:5d} {wall:7.1f} "
                      f"{scan:7.1f} {len(files) / scan:8.0f} {len(files) / scan / n:8.0f} "
                      f"{nspec / scan:9.0f}  {peaks}", flush=True)
        return
    print(f"{'survey':8s} {'files':>7s} {'spectra':>8s} {'seconds':>8s} {'files/s':>8s} "
          f"{'spectra/s':>10s}")
    for survey, files, _ in warmed_sets(lamost, desi, args.n_files, tuple(args.surveys)):
        t0 = time.perf_counter()
        rows = build_manifest(survey, files)
        dt = time.perf_counter() - t0
        print(f"{survey:8s} {len(files):7d} {rows.size:8d} {dt:8.1f} {len(files) / dt:8.0f} "
              f"{rows.size / dt:10.0f}")


if __name__ == "__main__":
    main()
