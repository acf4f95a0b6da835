"""The one shard executor (preprocess, embed, infer): fingerprints chain through the stages, so
a changed upstream setting recomputes every downstream shard; a failure on one MPI rank ends
every rank promptly with one line naming the failing shard."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from specbridge.io.shards import read_index
from specbridge.parallel.executor import ShardTask, fingerprint
from specbridge.vac.catalogue import read_fits_tables

pytestmark = pytest.mark.mpi


def _run(cmd, env, ok=True, timeout=600):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_fingerprint_covers_values_and_types():
    a = np.arange(4, dtype=np.int64)
    assert fingerprint("x", a) == fingerprint("x", a.copy())
    assert fingerprint("x", a) != fingerprint("x", a.astype(np.int32))
    assert fingerprint("x", a) != fingerprint("y", a)
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
    assert ShardTask(0, 0, 3, "p", "f").weight is None


@pytest.fixture(scope="module")
def evaluated(transfer_run, tmp_path_factory, tool_env):
    """The selection table of the four MLP candidates on the session's DESI spectra."""
    ev = tmp_path_factory.mktemp("ev")
    cands = [str(p) for p in transfer_run["cands"].values()]
    _run(["specbridge", "evaluate", "--config", transfer_run["config"], "--checkpoints", *cands,
          "--spectra", transfer_run["index"]["desi"], "--metrics", ev / "m.ecsv",
          "--metrics-md", ev / "m.md", "--selection", ev / "s.ecsv", "--summary",
          ev / "sum.ecsv", "--predictions", ev / "p.h5"], tool_env)
    return {"selection": ev / "s.ecsv", "cands": cands}


def test_changed_preprocessing_makes_every_prediction_shard_stale(transfer_run, evaluated,
                                                                   tmp_path, tool_env):
    """Preprocess again with another continuum setting, then infer without --force: every
    prediction shard is recomputed, and the VAC equals that of a clean run."""
    d = transfer_run["dir"]
    manifest = d / "desi.fits"
    changed = tmp_path / "none.yaml"
    cfg = yaml.safe_load(transfer_run["config"].read_text())
    changed.write_text(yaml.safe_dump({**cfg, "preprocess": {"continuum": {"method": "none"}}}))

    def preprocess(config):
        _run(["specbridge", "preprocess", "--config", config, "--manifest", manifest,
              "--output", tmp_path / "pre" / "index.h5", "--spectra-per-shard", "150"],
             tool_env)

    def infer(config, out):
        return _run(["specbridge", "infer", "--config", config, "--checkpoints",
                     *evaluated["cands"], "--selection", evaluated["selection"], "--spectra",
                     tmp_path / "pre" / "index.h5", "--output", tmp_path / out / "index.h5"],
                    tool_env)

    def vac(out):
        _run(["specbridge", "vac", "--config", transfer_run["config"], "--predictions",
              tmp_path / out / "index.h5", "--manifest", manifest, "--fits",
              tmp_path / f"{out}.fits", "--hdf5", tmp_path / f"{out}.h5"], tool_env)
        return read_fits_tables(tmp_path / f"{out}.fits")

    preprocess(transfer_run["config"])
    r = infer(transfer_run["config"], "inf")
    n = len(read_index(tmp_path / "inf" / "index.h5"))
    assert n >= 2 and "(0 skipped as complete)" in r.stderr
    first = vac("inf")
    preprocess(changed)              # the spectra change; the inference settings do not
    r = infer(transfer_run["config"], "inf")
    assert "(0 skipped as complete)" in r.stderr, r.stderr[-2000:]
    r = infer(transfer_run["config"], "inf")  # nothing changed since: all complete
    assert f"({n} skipped as complete)" in r.stderr
    stale_fixed = vac("inf")
    infer(transfer_run["config"], "clean")
    clean = vac("clean")
    for hdu in clean:
        for c in clean[hdu].dtype.names:
            np.testing.assert_array_equal(stale_fixed[hdu][c], clean[hdu][c],
                                          err_msg=f"{hdu}.{c}")
    assert not np.array_equal(first["PARAMS"]["TEFF"], clean["PARAMS"]["TEFF"],
                              equal_nan=True)


def test_job_array_parts_merge_to_the_single_job(transfer_run, evaluated, tmp_path, tool_env):
    """Inference as a job array (--part K/N, then --merge-parts) writes the same shards and
    index as one job; the merge computes nothing and fails, naming what is missing, when a
    part did not run."""
    import h5py

    from specbridge.io.shards import index_attrs, read_shard
    from specbridge.parallel.executor import part_of

    spectra = transfer_run["index"]["desi"]
    n_shards = len(read_index(spectra))
    assert n_shards >= 2
    # contiguous, covering, nearly equal ranges
    tasks = [ShardTask(i, 10 * i, 10, f"p{i}", "f") for i in range(7)]
    got = [part_of(tasks, k, 3) for k in range(3)]
    assert [[t.number for t in g] for g in got] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError):
        part_of(tasks, 3, 3)

    def infer(out, *extra, ok=True):
        return _run(["specbridge", "infer", "--config", transfer_run["config"], "--checkpoints",
                     *evaluated["cands"], "--selection", evaluated["selection"], "--spectra",
                     spectra, "--output", out, *extra], tool_env, ok=ok)

    infer(tmp_path / "one" / "index.h5")
    arr = tmp_path / "arr"
    parts = [arr / f"part-{k}.h5" for k in range(2)]
    infer(parts[0], "--part", "0/2")
    r = infer(arr / "index.h5", "--merge-parts", *parts, ok=False)
    assert r.returncode != 0 and "missing or stale" in r.stderr and "rerun the parts" in r.stderr
    assert not (arr / "index.h5").exists()
    infer(parts[1], "--part", "1/2")
    n_first = len(read_index(parts[0]))
    assert 1 <= n_first < n_shards and n_first + len(read_index(parts[1])) == n_shards
    r = infer(arr / "index.h5", "--merge-parts", *parts)
    assert "merged 2 parts" in r.stderr
    one, merged = read_index(tmp_path / "one" / "index.h5"), read_index(arr / "index.h5")
    assert [(s["first_row"], s["n"], s["fingerprint"]) for s in one] == \
        [(s["first_row"], s["n"], s["fingerprint"]) for s in merged]
    for a, b in zip(one, merged, strict=True):
        with h5py.File(a["path"]) as h:
            keys = list(h.keys())
        da, db = read_shard(a["path"], tuple(keys)), read_shard(b["path"], tuple(keys))
        for k in keys:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    ia, ib = index_attrs(tmp_path / "one" / "index.h5"), index_attrs(arr / "index.h5")
    for k in ("failures", "candidates", "settings_hash", "routing", "n_spectra"):
        assert ia[k] == ib[k], k


def _copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src.parent, dst)
    return dst / src.name


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])


def _assert_prompt_failure(cmd, env, shard: str):
    t0 = time.monotonic()
    r = _run(cmd, env, ok=False, timeout=120)
    dt = time.monotonic() - t0
    assert r.returncode != 0, r.stderr[-2000:]
    assert dt < 60, f"took {dt:.0f} s"
    assert shard in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "aborting the MPI job" in r.stderr


def test_failure_on_one_rank_ends_preprocess(transfer_run, tmp_path, tool_env, mpiexec):
    out = tmp_path / "pre" / "index.h5"
    bad = out.parent / "shards" / "shard-000001.h5"
    bad.mkdir(parents=True)  # the shard cannot be written there
    _assert_prompt_failure([mpiexec, "-n", "2", "specbridge", "preprocess", "--config",
                            transfer_run["config"], "--manifest", transfer_run["dir"] /
                            "desi.fits", "--output", out, "--spectra-per-shard", "100"],
                           tool_env, str(bad))
    assert not out.exists()


def test_failure_on_one_rank_ends_infer(transfer_run, evaluated, tmp_path, tool_env,
                                        mpiexec):
    spectra = _copy_index(Path(transfer_run["index"]["desi"]), tmp_path / "desi")
    victim = read_index(spectra)[1]["path"]
    _truncate(victim)
    out = tmp_path / "inf" / "index.h5"
    _assert_prompt_failure([mpiexec, "-n", "2", "specbridge", "infer", "--config",
                            transfer_run["config"], "--checkpoints", *evaluated["cands"],
                            "--selection", evaluated["selection"], "--spectra", spectra,
                            "--output", out], tool_env, victim)
    assert not out.exists()


def test_failure_on_one_rank_ends_embed(transfer_run, tmp_path, tool_env, mpiexec):
    cfg = tmp_path / "sf.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"specformer": {"d_model": 16, "n_layers": 1, "n_heads": 2}},
        "training": {"batch_size": 64, "epochs": 1, "val_fraction": 0.15}}))
    _run(["specbridge", "pretrain", "--config", cfg, "--model", "specformer", "--spectra",
          transfer_run["index"]["lamost"], "--output", tmp_path / "sf.pt"], tool_env)
    spectra = _copy_index(Path(transfer_run["index"]["lamost"]), tmp_path / "lamost")
    victim = read_index(spectra)[0]["path"]
    _truncate(victim)
    out = tmp_path / "emb" / "index.h5"
    _assert_prompt_failure([mpiexec, "-n", "2", "specbridge", "embed", "--config", cfg,
                            "--model", tmp_path / "sf.pt", "--spectra", spectra, "--output",
                            out], tool_env, victim)
    assert not out.exists()
