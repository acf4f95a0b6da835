"""Tile a manifest K times under distinct IDs, for scale runs on a limited mock file set.

    python benchmarks/tile_manifest.py IN.fits OUT.fits --times 10

Copy k (k = 0..K-1) keeps every column but adds k * 10**15 to non-negative SPECIDs, so the
same files are read repeatedly as distinct spectra (ISSUE: 10^6 spectra from a 10^5 mock set).
Written with fitsio in the manifest's own format.
"""

from __future__ import annotations

import argparse

import fitsio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--times", type=int, default=10)
    args = ap.parse_args()
    t = fitsio.read(args.input, ext="MANIFEST")
    h = fitsio.read_header(args.input, ext="MANIFEST")
    with fitsio.FITS(args.output, "rw", clobber=True) as f:
        for k in range(args.times):
            part = t.copy()
            ok = part["SPECID"] >= 0
            part["SPECID"][ok] += k * 10**15
            if k == 0:
                f.write(part, extname="MANIFEST",
                        header=[{"name": "SURVEY", "value": h.get("SURVEY", "desi")}])
            else:
                f[-1].append(part)
    print(f"{args.output}: {len(t) * args.times} rows")


if __name__ == "__main__":
    main()
