"""Manifest scan rate over >= 10,000 files, built from the real files in ../shared/data.

    python benchmarks/manifest_scan.py [--n-files 10000] [--shared ../shared/data]

Each survey's file set is N symbolic links cycling over the real files (LAMOST: 301 spectra in
both layouts, gzipped and plain; DESI: the 7 coadd/spectra files, 1-25 spectra each), so the
scan reads N distinct paths. The page cache is warm after the first pass over the real files:
the figures are the CPU cost of scanning (open, header, B-arm/spectrum read, checks), the part
specbridge controls, not the filesystem's.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=10000)
    ap.add_argument("--shared", type=Path,
                    default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = ap.parse_args()
    lamost = sorted(p for p in (args.shared / "lamost").glob("*/*") if ".fits" in p.name)
    desi = sorted(p for p in (args.shared / "desi").glob("*.fits") if "redrock" not in p.name)
    print(f"{'survey':8s} {'files':>7s} {'spectra':>8s} {'seconds':>8s} {'files/s':>8s} "
          f"{'spectra/s':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for survey, sources in (("lamost", lamost), ("desi", desi)):
            d = Path(tmp) / survey
            d.mkdir()
            files = linked_files(sources, args.n_files, d)
            build_manifest(survey, files[: len(sources)])  # warm caches and imports
            t0 = time.perf_counter()
            rows = build_manifest(survey, files)
            dt = time.perf_counter() - t0
            print(f"{survey:8s} {len(files):7d} {rows.size:8d} {dt:8.1f} {len(files) / dt:8.0f} "
                  f"{rows.size / dt:10.0f}")


if __name__ == "__main__":
    main()
