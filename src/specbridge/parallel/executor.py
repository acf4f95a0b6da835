"""The one shard executor: every MPI map over shards (preprocess, embed, infer) runs here,
and every map whose small results are gathered instead of written (the manifest's scan of
input files, :func:`map_gather`).

A stage describes its work as :class:`ShardTask` objects (one output shard each, with the
fingerprint of everything that shard depends on) and a ``compute`` function; the executor

- spreads the tasks over the ranks by weight (:func:`weighted_partition`);
- skips a task whose output is complete with the same fingerprint (unless ``force``);
- writes each output atomically, with its fingerprint, first row and version as attributes;
- logs progress with rate and ETA for the whole job: the other ranks send rank 0 a short
  non-blocking message per finished shard, which rank 0 reads between its own shards and
  while it waits for the rest;
- turns a failure on any rank into one line naming the stage, the shard and the reason, and
  ends every rank promptly (``MPI_Abort``) instead of leaving the others in a collective;
- gathers the per-reason error counts and timings, and has rank 0 write the index once,
  listing every shard with its fingerprint.

A job can also run as independent parts (a SLURM job array over shard ranges instead of one
MPI job): each part runs :func:`run_shards` on :func:`part_of` the tasks and writes a partial
index of its shards; :func:`merge_parts` then checks that every shard of the whole job is
complete with its fingerprint and writes the index, summing the parts' error counts.

Fingerprints chain: a stage's task fingerprint includes the fingerprints of its input shards
(read from the upstream index), so a change anywhere upstream makes every downstream shard
stale. Fault-injection points (:func:`specbridge.faults.kill_point`) follow every shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specbridge import __version__
from specbridge.errors import UserError, describe
from specbridge.faults import kill_point
from specbridge.io.shards import shard_is_complete, write_arrays, write_index
from specbridge.parallel.mpi import comm_rank_size, gather_error_counts
from specbridge.parallel.partition import weighted_partition
from specbridge.progress import Progress

_PROGRESS_TAG = 7301


def fingerprint(*parts: Any) -> str:
    """A short SHA-256 of ``parts`` (JSON-serialisable values, numpy arrays or bytes)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


@dataclass
class ShardTask:
    """One output shard: rows ``[first_row, first_row + n)`` of the job, written to ``path``.

    ``fingerprint`` digests everything the shard depends on (settings, inputs' fingerprints,
    model digests, code version); ``weight`` is its cost for the partition (default ``n``);
    ``inputs`` names the files it reads, for error messages and for ``compute``.
    """

    number: int
    first_row: int
    n: int
    path: str
    fingerprint: str
    weight: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardResult:
    """What ``compute`` returns: the arrays to write (each with ``n`` rows), extra attributes,
    and per-reason counts of rows that could not be processed."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


Writer = Callable[[Path, dict[str, np.ndarray], dict[str, Any], int], None]


@dataclass
class ShardJob:
    """A map over shards. ``compute(task)`` makes one shard's arrays; ``write(path, arrays,
    attrs, n)`` stores them atomically (default: one dataset per array)."""

    stage: str
    tasks: list[ShardTask]
    compute: Callable[[ShardTask], ShardResult]
    index_path: str | Path
    index_attrs: dict[str, Any] = field(default_factory=dict)
    write: Writer = write_arrays
    force: bool = False


@dataclass
class JobSummary:
    """On rank 0 after the job: shards, how many were skipped as complete, rows computed, the
    summed error counts, wall time, the slowest rank's compute time (s) and peak memory per
    rank (MB)."""

    n_shards: int
    skipped: int
    n_computed: int
    failures: dict[str, int]
    wall_s: float
    compute_s: float
    peak_mb: list[float]
    size: int


class ShardError(UserError):
    """A shard failed; the message names the stage, the shard, its files and the reason."""


class _JobProgress:
    """Progress of the whole job in rows, logged by rank 0 with rate and ETA."""

    def __init__(self, comm: Any, log: logging.Logger, stage: str, total: int,
                 expected: list[int], unit: str = "spectra"):
        self.comm, self.total = comm, total
        self.rank, _ = comm_rank_size(comm)
        self.expected = sum(expected) - (expected[0] if expected else 0)  # messages to rank 0
        self.received = 0
        self.done = 0
        self.requests: list[Any] = []
        self.report = Progress(stage, log, unit=unit)

    def step(self, n: int) -> None:
        """Count ``n`` finished rows of this rank."""
        if self.rank != 0:
            self.requests.append(self.comm.isend(n, dest=0, tag=_PROGRESS_TAG))
            return
        self.done += n
        self._drain(block=False)
        self.report(self.done, self.total)

    def _drain(self, block: bool) -> None:
        if self.comm is None:
            return
        from mpi4py import MPI

        while self.received < self.expected and (
                block or self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_PROGRESS_TAG)):
            self.done += self.comm.recv(source=MPI.ANY_SOURCE, tag=_PROGRESS_TAG)
            self.received += 1
            if block:
                self.report(self.done, self.total)

    def finish(self) -> None:
        """Rank 0 waits for every other rank's messages; the others complete their sends."""
        if self.comm is None:
            return
        if self.rank == 0:
            self._drain(block=True)
            if self.done < self.total or self.total == 0:
                self.report(self.total, self.total)
        else:
            from mpi4py import MPI

            MPI.Request.waitall(self.requests)


def _describe_task(job: ShardJob, task: ShardTask) -> str:
    files = [str(v) for v in task.inputs.values() if isinstance(v, (str, Path)) and v]
    src = f" (input {', '.join(files)})" if files else ""
    return f"{job.stage}: shard {task.number} -> {task.path}{src}"


def run_shards(job: ShardJob, comm: Any = None, log: logging.Logger | None = None
               ) -> JobSummary | None:
    """Run ``job`` on every rank of ``comm`` (None: one process). Returns the summary on rank
    0, None elsewhere. A failing shard raises :class:`ShardError` (one line); under several
    ranks the caller's :func:`specbridge.parallel.mpi.run_or_abort` turns that into an abort
    of every rank."""
    log = log or logging.getLogger(f"specbridge.{job.stage}")
    rank, size = comm_rank_size(comm)
    t0 = time.monotonic()
    parts = weighted_partition([t.n + 1.0 if t.weight is None else t.weight
                                for t in job.tasks], size)
    mine = parts[rank]
    progress = _JobProgress(comm, log, job.stage, sum(t.n for t in job.tasks),
                            [len(p) for p in parts])
    counts: Counter = Counter()
    written, skipped, n_computed, t_compute = [], 0, 0, 0.0
    for k, i in enumerate(mine):
        task = job.tasks[i]
        try:
            if not job.force and shard_is_complete(task.path, task.n, task.fingerprint):
                skipped += 1
            else:
                t1 = time.monotonic()
                res = job.compute(task)
                attrs = {**res.attrs, "settings_hash": task.fingerprint,
                         "first_row": task.first_row, "specbridge_version": __version__}
                Path(task.path).parent.mkdir(parents=True, exist_ok=True)
                job.write(Path(task.path), res.arrays, attrs, task.n)
                counts.update(res.counts)
                t_compute += time.monotonic() - t1
                n_computed += task.n
        except Exception as exc:
            log.debug("shard %d failed", task.number, exc_info=True)
            raise ShardError(f"{_describe_task(job, task)} failed: {describe(exc)}") from exc
        written.append({"path": str(task.path), "first_row": task.first_row, "n": task.n,
                        "fingerprint": task.fingerprint})
        progress.step(task.n)
        kill_point(job.stage, rank, k + 1)
    progress.finish()
    total = gather_error_counts(comm, counts)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    mine_stats = (written, skipped, n_computed, t_compute, peak_mb)
    everyone = comm.gather(mine_stats, root=0) if comm is not None else [mine_stats]
    if rank != 0:
        return None
    shards = [s for e in everyone for s in e[0]]
    write_index(job.index_path, shards, {
        **job.index_attrs, "n_shards": len(shards), "specbridge_version": __version__,
        "failures": json.dumps(total)})
    return JobSummary(len(shards), sum(e[1] for e in everyone), sum(e[2] for e in everyone),
                      total or {}, time.monotonic() - t0, max(e[3] for e in everyone) or 1e-9,
                      [e[4] for e in everyone], size)


def part_of(tasks: Sequence[ShardTask], part: int, n_parts: int) -> list[ShardTask]:
    """The tasks of part ``part`` (0-based) of ``n_parts``: contiguous ranges of tasks, as
    equal in number as possible (shards are of equal size but for the last); ValueError for
    a part outside 0 .. n_parts - 1."""
    if not 0 <= part < n_parts:
        raise ValueError(f"part {part} is not in 0..{n_parts - 1}")
    return [tasks[i] for i in np.array_split(np.arange(len(tasks)), n_parts)[part]]


def merge_parts(job: ShardJob, part_indexes: Sequence[str | Path],
                log: logging.Logger | None = None) -> int:
    """Write ``job``'s index from the shards its parts wrote (their partial indexes
    ``part_indexes``), computing nothing: every task's shard must be complete with its
    fingerprint, else :class:`~specbridge.errors.UserError` naming how many and the first
    ones (rerun those parts). The index's 'failures' are the parts' summed; returns the
    number of shards."""
    from specbridge.io.shards import index_attrs

    log = log or logging.getLogger(f"specbridge.{job.stage}")
    missing = [t for t in job.tasks if not shard_is_complete(t.path, t.n, t.fingerprint)]
    if missing:
        first = ", ".join(str(t.path) for t in missing[:3])
        raise UserError(f"{job.stage}: {len(missing)} of {len(job.tasks)} shards are missing or "
                        f"stale after the parts ran ({first}{', ...' if len(missing) > 3 else ''})"
                        "; rerun the parts that should have written them")
    failures: Counter = Counter()
    for p in part_indexes:
        try:
            failures.update(json.loads(index_attrs(p).get("failures", "{}")))
        except (OSError, ValueError) as exc:
            raise UserError(f"{job.stage}: cannot read the part index {p}: {describe(exc)}"
                            ) from None
    write_index(job.index_path, [{"path": str(t.path), "first_row": t.first_row, "n": t.n,
                                  "fingerprint": t.fingerprint} for t in job.tasks], {
        **job.index_attrs, "n_shards": len(job.tasks), "specbridge_version": __version__,
        "failures": json.dumps(dict(failures)), "n_parts": len(part_indexes)})
    log.info("%s: merged %d parts into %s (%d shards)", job.stage, len(part_indexes),
             job.index_path, len(job.tasks))
    return len(job.tasks)


def _map_mine(stage: str, items: Sequence[Any], compute: Callable[[Any], Any], comm: Any,
              log: logging.Logger, weights: Sequence[float] | None, unit: str
              ) -> list[tuple[int, Any]]:
    """This rank's share of ``items`` computed: [(item index, result)] in ascending order."""
    rank, size = comm_rank_size(comm)
    parts = weighted_partition([1.0] * len(items) if weights is None else weights, size)
    progress = _JobProgress(comm, log, stage, len(items), [len(p) for p in parts], unit=unit)
    mine: list[tuple[int, Any]] = []
    for k, i in enumerate(parts[rank]):
        try:
            mine.append((i, compute(items[i])))
        except Exception as exc:
            log.debug("item %d failed", i, exc_info=True)
            raise ShardError(f"{stage}: {unit[:-1] if unit.endswith('s') else unit} {i} "
                             f"({items[i]}) failed: {describe(exc)}") from exc
        progress.step(1)
        kill_point(stage, rank, k + 1)
    progress.finish()
    return mine


def map_gather(stage: str, items: Sequence[Any], compute: Callable[[Any], Any],
               comm: Any = None, log: logging.Logger | None = None,
               weights: Sequence[float] | None = None, unit: str = "items",
               ) -> list[Any] | None:
    """``[compute(item) for item in items]`` spread over the ranks of ``comm`` (None: one
    process), the results gathered onto rank 0 in the order of ``items``.

    The items are spread by ``weights`` (default 1 each) as :func:`run_shards` spreads shards;
    rank 0 logs progress in ``unit`` for the whole job with rate and ETA; an exception in
    ``compute`` raises :class:`ShardError` naming the stage and the item (under several ranks
    the caller's :func:`specbridge.parallel.mpi.run_or_abort` aborts every rank). Returns the
    list of results on rank 0, None elsewhere. The results travel through one gather with
    pickle protocol 5 (``mpi4py.util.pkl5``: NumPy buffers out of band, messages over 2 GiB
    allowed); they must fit in rank 0's memory together, twice. For rows of one dtype at
    survey scale use :func:`map_gather_rows`.
    """
    log = log or logging.getLogger(f"specbridge.{stage}")
    rank, _ = comm_rank_size(comm)
    mine = _map_mine(stage, items, compute, comm, log, weights, unit)
    if comm is not None:
        from mpi4py.util import pkl5

        everyone = pkl5.Intracomm(comm).gather(mine, root=0)
    else:
        everyone = [mine]
    if rank != 0:
        return None
    out: list[Any] = [None] * len(items)
    for part in everyone:
        for i, res in part:
            out[i] = res
    return out


#: bytes of rows one message of :func:`map_gather_rows` carries at most
ROWS_MESSAGE_BYTES = 64 * 2**20


def map_gather_rows(stage: str, items: Sequence[Any], compute: Callable[[Any], np.ndarray],
                    dtype: np.dtype, comm: Any = None, log: logging.Logger | None = None,
                    weights: Sequence[float] | None = None, unit: str = "items",
                    message_bytes: int = ROWS_MESSAGE_BYTES,
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """As :func:`map_gather` for a ``compute`` that returns rows (structured array of
    ``dtype``) per item, gathered in bounded memory: on rank 0 ``(rows, sizes)``, the rows
    of every item concatenated in the order of ``items`` and ``sizes`` (n_items,) int64 the
    rows of each; None elsewhere.

    Rank 0 allocates the result once and copies its own rows in, freeing them as it goes;
    then it receives every other rank's rows, rank by rank, in messages of at most
    ``message_bytes`` (raw bytes, no pickle) and copies them to their places. Rank 0 holds
    about the result's size plus one message, the other ranks their own rows plus one
    message (not two copies of everything, as one gather would)."""
    log = log or logging.getLogger(f"specbridge.{stage}")
    dtype = np.dtype(dtype)
    rank, size = comm_rank_size(comm)
    mine = _map_mine(stage, items, compute, comm, log, weights, unit)
    for _, res in mine:
        if res.dtype != dtype:
            raise TypeError(f"{stage}: rows of dtype {res.dtype}, expected {dtype}")
    counts = [(i, int(res.size)) for i, res in mine]
    every_count = comm.gather(counts, root=0) if comm is not None else [counts]
    if rank != 0:
        batches = _row_batches(mine, dtype.itemsize, message_bytes)
        mine.clear()  # the batches hold the rows now, and let go of each as it is sent
        for k, batch in enumerate(batches):
            comm.send([i for i, _ in batch], dest=0, tag=2 * k)
            buf = np.concatenate([res for _, res in batch]) if batch else np.empty(0, dtype)
            for j in range(len(batch)):
                batch[j] = None  # this message's rows are in buf
            comm.Send(buf.view(np.uint8), dest=0, tag=2 * k + 1)
        comm.send(None, dest=0, tag=2 * len(batches))
        return None
    sizes = np.zeros(len(items), np.int64)
    for part in every_count:
        for i, n in part:
            sizes[i] = n
    start = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.empty(int(start[-1]), dtype)
    for j, (i, res) in enumerate(mine):
        rows[start[i]:start[i + 1]] = res
        mine[j] = None  # copied: let go of it
    for src in range(1, size):
        k = 0
        while True:
            ids = comm.recv(source=src, tag=2 * k)
            if ids is None:
                break
            buf = np.empty(int(sizes[ids].sum()), dtype)
            comm.Recv(buf.view(np.uint8), source=src, tag=2 * k + 1)
            a = 0
            for i in ids:
                rows[start[i]:start[i + 1]] = buf[a:a + sizes[i]]
                a += int(sizes[i])
            k += 1
    return rows, sizes


def _row_batches(mine: list[tuple[int, np.ndarray]], itemsize: int, message_bytes: int
                 ) -> list[list[Any]]:
    """``mine`` split, in order, into lists of (index, rows) of at most ``message_bytes``
    each (an item larger than that alone)."""
    out: list[list[Any]] = []
    cur: list[Any] = []
    nbytes = 0
    for i, res in mine:
        b = int(res.size) * itemsize
        if cur and nbytes + b > message_bytes:
            out.append(cur)
            cur, nbytes = [], 0
        cur.append((i, res))
        nbytes += b
    if cur:
        out.append(cur)
    return out


def input_fingerprints(shards: list[Mapping[str, Any]]) -> list[str]:
    """The fingerprint of each upstream shard listed by an index (see io.shards.read_index):
    from the index where it records them, else from the shard's own ``settings_hash``."""
    import h5py

    out = []
    for s in shards:
        fp = s.get("fingerprint")
        if not fp:
            try:
                with h5py.File(s["path"], "r") as h:
                    fp = str(h.attrs.get("settings_hash", ""))
            except OSError as exc:
                raise UserError(f"cannot read shard {s['path']}: {describe(exc)}") from None
        out.append(fp)
    return out
