"""The catalogue built in bounded memory: every file of the VAC written a chunk of rows at a
time, so that peak memory depends on ``chunk_rows`` and ``block_rows``, not on the number of
spectra.

1. **Keys** (:func:`scan_keys`): a few small columns of every row (TARGETID, SURVEY-PROGRAM
   code, HEALPix, where its prediction is, usable, S/N; ≈ 40 bytes a row) give PRIMARY and
   the DESI order of the per-SURVEY-PROGRAM and per-HEALPix files.
2. **Manifest order** (:func:`build`, first pass): the rows are built ``chunk_rows`` manifest
   rows at a time and appended to the catalogue of every observation (FITS and HDF5, manifest
   order) and spilled, by output position, to temporary block files.
3. **DESI order** (second pass): each block (whole HEALPix pixels, at most ``block_rows``
   rows unless one pixel is larger) is read back, sorted, written as per-HEALPix files and
   appended to its SURVEY-PROGRAM's merged catalogue.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fitsio
import h5py
import numpy as np

from specbridge import flags
from specbridge.atomic import atomic_output
from specbridge.io.shards import read_index
from specbridge.vac import layout
from specbridge.vac.catalogue import (
    HDUS,
    HPX_NSIDE,
    chunk_tables,
    file_cards,
    hdu_columns,
    primary_mask,
    provenance,
    read_manifest_chunk,
    table_header,
    write_cards,
)
from specbridge.vac.healpix import ang2pix_nest

log = logging.getLogger("specbridge.vac")
Columns = dict[str, list[tuple[str, str, str, str]]]
Cards = list[tuple[str, Any, str]]


# ---- writers that grow a chunk at a time -------------------------------------------------------

def fits_row_bytes(table: np.ndarray) -> bytes:
    """The rows of a structured array as the data of a FITS binary table (the bytes cfitsio
    writes for it, as fitsio maps the dtype): numbers big-endian, strings as they are (NUL
    padded), bool as the logical 'T'/'F', int8 as unsigned bytes with TZERO = -128."""
    fields = []
    for name in table.dtype.names:
        dt = table.dtype[name]
        fields.append((name, "u1" if dt.kind == "b" or dt == np.dtype("i1") else
                       dt.newbyteorder(">") if dt.kind in "iuf" else dt))
    out = np.empty(table.size, fields)
    for name in table.dtype.names:
        dt = table.dtype[name]
        if dt.kind == "b":
            out[name] = np.where(table[name], ord("T"), ord("F"))
        elif dt == np.dtype("i1"):
            out[name] = (table[name].astype(np.int16) + 128).astype(np.uint8)
        else:
            out[name] = table[name]
    return out.tobytes()


def set_int_cards(header: bytes, values: dict[str, int]) -> bytes:
    """A header (whole 80-byte cards) with the integer keywords of ``values`` set, each in
    FITS fixed format (right-justified to column 30, the comment kept). Every keyword must be
    present once."""
    cards = [header[k:k + 80] for k in range(0, len(header), 80)]
    found = set()
    for k, card in enumerate(cards):
        key = card[:8].decode("ascii").strip()
        if key in values and card[8:10] == b"= ":
            cards[k] = card[:10] + f"{int(values[key]):>20d}".encode() + card[30:]
            found.add(key)
    if found != set(values):
        raise ValueError(f"header lacks {sorted(set(values) - found)}")
    return b"".join(cards)


class HeaderTemplate:
    """The headers of a catalogue file, written once by fitsio (tables of 0 rows, integer
    placeholders) and reused for every file that differs only in integer keywords (NAXIS2,
    NSPEC, HPXPIXEL): a file is then its headers with those set, each table's rows as FITS
    bytes (:func:`fits_row_bytes`) zero-padded to 2880, and CHECKSUM/DATASUM written by
    fitsio. fitsio's header writing (~10 ms a file) is paid once, not per HEALPix file."""

    def __init__(self, columns: Columns, cards: Cards, candidates: Sequence[str],
                 workdir: str | Path):
        path = Path(workdir) / f".template-{os.getpid()}-{id(self)}.fits"  # ranks share it
        with fitsio.FITS(str(path), "rw", clobber=True) as f:
            f.write(None)
            write_cards(f[0], [("EXTNAME", "PRIMARY", "provenance of the catalogue"), *cards])
            for name in HDUS:
                cols = columns[name]
                f.create_table_hdu(dtype=np.dtype([(c[0], c[1]) for c in cols]),
                                   extname=name, units=[c[2] for c in cols])
                write_cards(f[-1], table_header(name, cols, 0, candidates))
        with fitsio.FITS(str(path)) as f:  # the offsets once cfitsio has closed the file
            offsets = [f[k].get_offsets() for k in range(len(HDUS) + 1)]
        raw = path.read_bytes()
        path.unlink()
        self.headers = [raw[o["header_start"]:o["data_start"]] for o in offsets]

    def write(self, path: Path, nrows: int, data: dict[str, Any],
              primary_ints: dict[str, int]) -> None:
        """Write ``path`` (not atomically: callers rename it or its directory): ``data`` per
        table is its rows' bytes or the path of a file holding them; ``primary_ints`` sets
        integer keywords of the primary header (NSPEC...)."""
        with open(path, "wb") as out:
            out.write(set_int_cards(self.headers[0], primary_ints))
            for k, name in enumerate(HDUS, start=1):
                out.write(set_int_cards(self.headers[k], {"NAXIS2": nrows, "NSPEC": nrows}))
                part = data[name]
                if isinstance(part, Path):
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 22)
                    size = part.stat().st_size
                else:
                    out.write(part)
                    size = len(part)
                out.write(b"\0" * (-size % 2880))
        with fitsio.FITS(str(path), "rw") as f:
            for hdu in f:
                hdu.write_checksum()


class FitsAppender:
    """A FITS file of row-matched table HDUs written a chunk at a time in bounded memory.

    Each table's rows go, as FITS binary-table bytes (:func:`fits_row_bytes`), to their own
    temporary file (cfitsio writes a table column by column, which costs several times more
    for large chunks, and can only append cheaply to the last HDU); ``close`` joins them
    behind the headers (:class:`HeaderTemplate`) and writes the checksums. The file appears
    under its name only then (atomic)."""

    def __init__(self, path: str | Path, columns: Columns, candidates: Sequence[str],
                 workdir: str | Path):
        self.path = Path(path)
        self.columns, self.candidates = columns, list(candidates)
        self.workdir = Path(workdir)
        self.nrows = 0
        self._parts = {name: self.workdir / f"{self.path.stem}.{name}.part" for name in HDUS}
        self._fh = {name: open(self._parts[name], "wb") for name in HDUS}

    def append(self, tables: dict[str, np.ndarray]) -> None:
        """Append rows (the same count to every HDU)."""
        n = {tables[name].size for name in HDUS}
        if len(n) != 1:
            raise ValueError(f"{self.path}: tables are not row-matched ({sorted(n)})")
        for name in HDUS:
            self._fh[name].write(fits_row_bytes(tables[name]))
        self.nrows += n.pop()

    def close(self, cards: Cards) -> Path:
        """Write the file with primary-header ``cards`` and remove the temporary parts."""
        for fh in self._fh.values():
            fh.close()
        template = HeaderTemplate(self.columns, cards, self.candidates, self.workdir)
        with atomic_output(self.path) as tmp:
            template.write(tmp, self.nrows, dict(self._parts), {})
        self.discard()
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary parts (after close, or on failure)."""
        for name in HDUS:
            self._fh[name].close()
            self._parts[name].unlink(missing_ok=True)


class Hdf5Appender:
    """The HDF5 twin written a chunk at a time: groups PARAMS, CANDIDATES, FIBERMAP, one
    resizable, gzip-compressed dataset per column with 'unit' and 'description'."""

    def __init__(self, h: h5py.File, columns: Columns, chunk_rows: int = 65_536):
        self.h, self.nrows = h, 0
        for name in HDUS:
            g = h.create_group(name)
            for cname, dt, unit, desc in columns[name]:
                ds = g.create_dataset(cname, shape=(0,), maxshape=(None,), dtype=dt,
                                      chunks=(chunk_rows,), compression="gzip",
                                      compression_opts=1, shuffle=True)
                ds.attrs["unit"] = unit
                ds.attrs["description"] = desc

    def append(self, tables: dict[str, np.ndarray]) -> None:
        """Append row-matched rows to every dataset."""
        k = tables["PARAMS"].size
        if not k:
            return
        for name in HDUS:
            for cname in tables[name].dtype.names:
                ds = self.h[name][cname]
                ds.resize((self.nrows + k,))
                ds[self.nrows:] = tables[name][cname]
        self.nrows += k

    def close(self, cards: Cards) -> None:
        """The cards as root attributes."""
        for key, value, _ in cards:
            self.h.attrs[key] = value


# ---- pass 0: the keys of every row ------------------------------------------------------------

@dataclass
class Keys:
    """Per manifest row (n,): ``specid`` i8, ``sp`` i2 (index into ``sp_names``, sorted
    (SURVEY, PROGRAM) pairs), ``healpix`` i4 (-1: no position), ``shard`` i4 and ``pos`` i4
    (where its prediction is; -1: none), ``primary`` bool."""

    specid: np.ndarray
    sp: np.ndarray
    sp_names: list[tuple[str, str]]
    healpix: np.ndarray
    shard: np.ndarray
    pos: np.ndarray
    primary: np.ndarray


def scan_keys(shards: Sequence[dict[str, Any]], hdu: fitsio.hdu.TableHDU,
              chunk_rows: int) -> Keys:
    """Read the keys of every manifest row and where its prediction is; set PRIMARY
    (:func:`~specbridge.vac.catalogue.primary_mask`). Raises ValueError when a shard's rows
    fall outside the manifest or its IDs differ from it (a wrong manifest)."""
    n = hdu.get_nrows()
    specid = np.empty(n, np.int64)
    sp_raw = np.empty(n, np.int32)
    healpix = np.empty(n, np.int32)
    codes: dict[tuple[str, str], int] = {}
    for a in range(0, n, chunk_rows):
        m = read_manifest_chunk(hdu, a, min(n, a + chunk_rows),
                                ("SPECID", "DESI_SURVEY", "DESI_PROGRAM", "RA", "DEC"))
        b = a + m["SPECID"].size
        specid[a:b] = m["SPECID"]
        healpix[a:b] = ang2pix_nest(HPX_NSIDE, m["RA"], m["DEC"])
        pairs = np.char.add(np.char.add(m["DESI_SURVEY"], b"/"), m["DESI_PROGRAM"])
        uniq, inv = np.unique(pairs, return_inverse=True)
        ids = [codes.setdefault(tuple(u.decode().split("/")), len(codes)) for u in uniq]
        sp_raw[a:b] = np.asarray(ids, np.int32)[inv.ravel()]
    sp_names = sorted(codes)
    remap = np.empty(max(len(codes), 1), np.int16)
    for pair, code in codes.items():
        remap[code] = sp_names.index(pair)
    sp = remap[sp_raw]
    del sp_raw
    shard = np.full(n, -1, np.int32)
    pos = np.full(n, -1, np.int32)
    usable = np.zeros(n, bool)
    snr = np.full(n, np.nan, np.float32)
    for k, s in enumerate(shards):
        with h5py.File(s["path"], "r") as h:
            r = h["manifest_row"][()]
            sid, fl, sn = h["specid"][()], h["flags"][()], h["snr"][()]
        if r.size and (r.min() < 0 or r.max() >= n):
            raise ValueError(f"{s['path']}: manifest rows outside the manifest ({n} rows)")
        if (sid != specid[r]).any():
            raise ValueError(f"{s['path']}: IDs differ from the manifest: wrong manifest?")
        if (shard[r] >= 0).any():
            raise ValueError(f"{s['path']}: manifest rows predicted twice")
        shard[r], pos[r] = k, np.arange(r.size, dtype=np.int32)
        usable[r] = ~flags.is_fatal(fl)
        snr[r] = sn
    primary = primary_mask(specid, usable, snr)
    return Keys(specid, sp, sp_names, healpix, shard, pos, primary)


def plan_blocks(file_key: np.ndarray, block_rows: int) -> np.ndarray:
    """Block boundaries (positions, starting with 0 and ending with n) over rows in output
    order whose (SURVEY-PROGRAM, HEALPix) key is ``file_key`` (n,): whole files per block, at
    most ``block_rows`` rows unless one file alone is larger."""
    n = file_key.size
    ends = np.concatenate([np.flatnonzero(file_key[1:] != file_key[:-1]) + 1, [n]])
    bounds, prev = [0], 0
    for e in ends:
        if e - bounds[-1] > block_rows and prev > bounds[-1]:
            bounds.append(prev)
        prev = int(e)
    if bounds[-1] != n:
        bounds.append(n)
    return np.asarray(bounds, np.int64)


def output_order(sp: np.ndarray, healpix: np.ndarray, block_rows: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The DESI order of the rows (by SURVEY-PROGRAM code ``sp``, then ``healpix``, then
    manifest order): ``out_pos`` (n,) i8, each manifest row's output position; ``sp_sorted``
    (n,) and ``file_key`` (n,) i8, the code and file of each output position; ``bounds``,
    the blocks (:func:`plan_blocks`)."""
    n = sp.size
    order = np.lexsort((healpix, sp))
    out_pos = np.empty(n, np.int64)
    out_pos[order] = np.arange(n)
    sp_sorted = sp[order]
    file_key = sp_sorted.astype(np.int64) * (1 << 32) + healpix[order] + 1
    del order
    return out_pos, sp_sorted, file_key, plan_blocks(file_key, block_rows)


# ---- pass 1: rows in manifest order -----------------------------------------------------------

class PredictionReader:
    """The prediction fields of given manifest rows, reading only the span of each shard they
    touch (one shard file open at a time)."""

    def __init__(self, shards: Sequence[dict[str, Any]], n_candidates: int, n_labels: int):
        self.shards, self.K, self.L = shards, n_candidates, n_labels
        self._open: tuple[int, h5py.File] | None = None

    def _file(self, k: int) -> h5py.File:
        if self._open is None or self._open[0] != k:
            self.close()
            self._open = (k, h5py.File(self.shards[k]["path"], "r"))
        return self._open[1]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def gather(self, shard: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Fields for rows whose prediction is at (``shard``, ``pos``) (c,), NaN / -1 / 0
        where ``shard`` is -1."""
        c, K, L = shard.size, self.K, self.L
        out = {"specid": np.full(c, -1, np.int64), "flags": np.zeros(c, np.int64),
               "snr": np.full(c, np.nan, np.float32), "regime": np.full(c, -1, np.int16),
               "ood_score": np.full(c, np.nan, np.float32),
               "ood_distance": np.full(c, np.nan, np.float32),
               "value": np.full((c, L), np.nan, np.float32),
               "error": np.full((c, L), np.nan, np.float32),
               "served": np.full((c, L), -1, np.int64),
               "candidate_value": np.full((K, c, L), np.nan, np.float32),
               "candidate_error": np.full((K, c, L), np.nan, np.float32)}
        for k in np.unique(shard[shard >= 0]):
            at = np.flatnonzero(shard == k)
            p = pos[at]
            lo, hi = int(p.min()), int(p.max()) + 1
            h, j = self._file(int(k)), p - lo
            for f in ("specid", "flags", "snr", "regime", "value", "error", "served"):
                out[f][at] = h[f][lo:hi][j]
            for f in ("ood_score", "ood_distance"):
                if f in h:  # shards written before the OOD scores have none
                    out[f][at] = h[f][lo:hi][j]
            for f in ("candidate_value", "candidate_error"):
                out[f][:, at] = h[f][:, lo:hi][:, j]
        return out


def _spill(spill: Path, tables: dict[str, np.ndarray], out_pos: np.ndarray,
           bounds: np.ndarray) -> None:
    """Append rows to the block files of their output positions ``out_pos`` (c,)."""
    block = np.searchsorted(bounds, out_pos, side="right") - 1
    for b in np.unique(block):
        sel = np.flatnonzero(block == b)
        with open(spill / f"{b}.pos", "ab") as fh:
            out_pos[sel].astype(np.int64).tofile(fh)
        for name in HDUS:
            with open(spill / f"{b}.{name}", "ab") as fh:
                tables[name][sel].tofile(fh)


def _read_block(spill: Path, b: int, start: int, stop: int, columns: Columns,
                remove: bool = True) -> dict[str, np.ndarray]:
    """The rows of block ``b`` (output positions [start, stop)) in output order; its spill
    files are removed after reading if ``remove`` (only where no other rank reads them)."""
    if stop == start:
        return {}
    p = np.fromfile(spill / f"{b}.pos", np.int64)
    if p.size != stop - start or not np.array_equal(np.sort(p), np.arange(start, stop)):
        raise RuntimeError(f"block {b}: {p.size} rows spilled, {stop - start} expected")
    order = np.argsort(p)
    out = {}
    for name in HDUS:
        dt = np.dtype([(c[0], c[1]) for c in columns[name]])
        out[name] = np.fromfile(spill / f"{b}.{name}", dt)[order]
        if remove:
            (spill / f"{b}.{name}").unlink()
    if remove:
        (spill / f"{b}.pos").unlink()
    return out


# ---- the whole catalogue ----------------------------------------------------------------------

@dataclass
class Summary:
    """What :func:`build` wrote: rows, rows without a prediction, PRIMARY rows, files."""

    n: int
    n_missing: int
    n_primary: int
    n_healpix_files: int
    merged: list[Path]
    seconds: dict[str, float]


def build(predictions: str | Path, manifest: str | Path, fits_path: str | Path,
          hdf5_path: str | Path, tree: str | Path | None, name: str, version: str,
          config_hash: str, chunk_rows: int = 100_000, block_rows: int = 250_000,
          progress: Callable[[str, int, int], None] | None = None,
          comm: Any = None) -> Summary | None:
    """Write the catalogue of every observation (``fits_path``, ``hdf5_path``: manifest
    order) and, if ``tree`` is given, the DESI layout under it (per-HEALPix files, merged
    catalogues per SURVEY-PROGRAM; see :mod:`specbridge.vac.layout`), in memory bounded by
    ``chunk_rows`` and ``block_rows`` (plus ≈ 40 bytes a row of keys).

    Under MPI (``comm`` with several ranks; every rank calls this) rank 0 writes the
    catalogue of every observation and the merged catalogues, and the per-HEALPix files (the
    costly part: ~5 ms of CPU each) are spread over the ranks by block; the files are the same
    as with one rank. Returns the summary on rank 0, None elsewhere."""
    from specbridge.parallel.mpi import bcast_from_rank0, comm_rank_size

    rank, size = comm_rank_size(comm)
    t0 = time.monotonic()
    tree = Path(tree) if tree is not None else None
    spill = (tree if tree is not None else Path(fits_path).parent) / f".spill-{name}"
    try:
        first = bcast_from_rank0(comm, lambda: _first_pass(
            predictions, manifest, fits_path, hdf5_path, tree, spill, name, version,
            config_hash, chunk_rows, block_rows, progress), errors=(OSError, KeyError,
                                                                    ValueError))
        t2 = time.monotonic()
        nfiles, merged = 0, []
        if tree is not None:
            nfiles, merged = _write_layout(spill, tree, first["sp_names"], first["sp_sorted"],
                                           first["file_key"], first["bounds"],
                                           first["columns"], first["cands"], first["base"],
                                           name, version, progress if rank == 0 else None,
                                           rank, size)
        if comm is not None and size > 1:
            nfiles = comm.reduce(nfiles, root=0)
            comm.Barrier()
        t3 = time.monotonic()
    finally:
        if rank == 0:
            shutil.rmtree(spill, ignore_errors=True)
    if rank != 0:
        return None
    return Summary(first["n"], first["n_missing"], first["n_primary"], nfiles, merged,
                   {"keys": first["t_keys"], "catalogue": t2 - t0 - first["t_keys"],
                    "layout": t3 - t2})


def _first_pass(predictions: str | Path, manifest: str | Path, fits_path: str | Path,
                hdf5_path: str | Path, tree: Path | None, spill: Path, name: str,
                version: str, config_hash: str, chunk_rows: int, block_rows: int,
                progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """The keys and the catalogue of every observation (one process), with the rows spilled
    in output order for the layout pass; returns what that pass needs and the counts."""
    t0 = time.monotonic()
    with h5py.File(predictions, "r") as h:
        attrs = dict(h.attrs)
    labels, cands = json.loads(attrs["labels"]), json.loads(attrs["candidates"])
    shards = read_index(predictions)
    columns = hdu_columns(labels, cands)
    base = provenance(attrs, labels, cands, name, version, config_hash)
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    reader = PredictionReader(shards, len(cands), len(labels))
    appender = FitsAppender(fits_path, columns, cands, spill)
    try:
        with fitsio.FITS(str(manifest)) as mf:
            hdu = mf["MANIFEST"]
            keys = scan_keys(shards, hdu, chunk_rows)
            n = keys.specid.size
            out_pos, sp_sorted, file_key, bounds = output_order(keys.sp, keys.healpix,
                                                                block_rows)
            t1 = time.monotonic()
            n_missing = 0
            with ExitStack() as stack:
                h5tmp = stack.enter_context(atomic_output(hdf5_path))
                h5 = stack.enter_context(h5py.File(h5tmp, "w"))
                twin = Hdf5Appender(h5, columns)
                for a in range(0, n, chunk_rows):
                    b = min(n, a + chunk_rows)
                    m = read_manifest_chunk(hdu, a, b)
                    seen = keys.shard[a:b] >= 0
                    pred = reader.gather(keys.shard[a:b], keys.pos[a:b])
                    tables = chunk_tables(labels, cands, m, pred, seen, keys.primary[a:b])
                    appender.append(tables)
                    twin.append(tables)
                    if tree is not None:
                        _spill(spill, tables, out_pos[a:b], bounds)
                    n_missing += int((~seen).sum())
                    if progress is not None:
                        progress("rows", b, n)
                cards = file_cards(base, n)
                twin.close(cards)
            reader.close()
            appender.close(cards)
    except BaseException:
        reader.close()
        appender.discard()
        raise
    return {"n": n, "n_missing": n_missing, "n_primary": int(keys.primary.sum()),
            "sp_names": keys.sp_names, "sp_sorted": sp_sorted, "file_key": file_key,
            "bounds": bounds, "columns": columns, "cands": cands, "base": base,
            "t_keys": t1 - t0}


def _write_layout(spill: Path, tree: Path, sp_names: list[tuple[str, str]],
                  sp_sorted: np.ndarray, file_key: np.ndarray, bounds: np.ndarray,
                  columns: Columns, cands: Sequence[str], base: Cards, name: str,
                  version: str, progress: Callable[[str, int, int], None] | None,
                  rank: int = 0, size: int = 1) -> tuple[int, list[Path]]:
    """Second pass: per block, the per-HEALPix files and the rows of the merged catalogue of
    each SURVEY-PROGRAM (written one SURVEY-PROGRAM at a time, in sorted order).
    ``sp_sorted`` (n,) is the SURVEY-PROGRAM code of each row in output order, ``file_key``
    (n,) its file's key, ``bounds`` the blocks (:func:`plan_blocks`). Of ``size`` ranks, this
    one (``rank``) writes the per-HEALPix files of blocks b with b % size == rank, and rank 0
    also every block's rows of the merged catalogues (a block never splits a file). Returns
    this rank's number of HEALPix files and the merged catalogues (rank 0)."""
    n = int(bounds[-1])
    current: tuple[int, FitsAppender] | None = None
    templates: dict[int, HeaderTemplate] = {}
    merged: list[Path] = []
    nfiles = 0

    def finish() -> None:
        if current is not None:
            s, p = sp_names[current[0]]
            merged.append(current[1].close(file_cards(base, current[1].nrows, [
                ("SURVEY", s, "DESI SURVEY of every row"),
                ("PROGRAM", p, "DESI PROGRAM of every row")])))

    try:
        for b in range(bounds.size - 1):
            mine = b % size == rank
            if not mine and rank != 0:
                continue
            start, stop = int(bounds[b]), int(bounds[b + 1])
            # rank 0 reads every block (merged catalogues), another rank its own: a block is
            # removed by its last reader only when that is certain (one rank, or rank 0's own)
            rows = _read_block(spill, b, start, stop, columns, remove=size == 1 or
                               (rank == 0 and mine))
            fk = file_key[start:stop]
            runs = np.concatenate([[0], np.flatnonzero(fk[1:] != fk[:-1]) + 1, [fk.size]])
            for i, j in zip(runs[:-1], runs[1:], strict=True):
                code = int(sp_sorted[start + i])
                s, p = sp_names[code]
                pixel = int(rows["FIBERMAP"]["HEALPIX"][i])
                part = {h: rows[h][i:j] for h in HDUS}
                if code not in templates:  # one header template per SURVEY-PROGRAM
                    extra = [("SURVEY", s, "DESI SURVEY of every row"),
                             ("PROGRAM", p, "DESI PROGRAM of every row"),
                             ("HPXPIXEL", 0, "HEALPix pixel of this file (-1: none)")]
                    templates = {code: HeaderTemplate(columns, file_cards(base, 0, extra),
                                                      cands, spill)}
                if mine:
                    path = layout.healpix_file(tree, name, version, s, p, pixel)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    templates[code].write(path, j - i,
                                          {h: fits_row_bytes(part[h]) for h in HDUS},
                                          {"NSPEC": j - i, "HPXPIXEL": pixel})
                    nfiles += 1
                if rank != 0:
                    continue
                if current is None or current[0] != code:
                    finish()
                    current = (code, FitsAppender(
                        layout.merged_file(tree, name, version, s, p), columns, cands, spill))
                current[1].append(part)
            if progress is not None:
                progress("layout rows", stop, n)
        finish()
        current = None
    finally:
        if current is not None:
            current[1].discard()
    return nfiles, merged
