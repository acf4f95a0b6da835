"""Hostile input at the command line: each case ends in one clear message (exit 2, no
traceback) or in flagged rows, never in a lost spectrum."""

from __future__ import annotations

import subprocess

import fitsio
import numpy as np
import pytest

from specbridge import flags
from specbridge.io.manifest import build_manifest, read_manifest
from specbridge.models.checkpoint import Checkpoint, save_checkpoint


def _cli(args, env):
    r = subprocess.run(["specbridge", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def test_label_table_missing_columns_is_one_clear_error(shared_data, tmp_path, tool_env):
    folder = shared_data / "lamost" / "mdwarfs_labelled"
    r = _cli(["manifest", "--survey", "lamost", "--output", tmp_path / "m.fits", "--labels",
              folder / "labels.csv", "--label-format", "table", "--label-columns",
              "teff=TEFF_NOT_THERE,logg=loggin,file=file_name",
              *sorted(folder.glob("*.fits"))[:3]], tool_env)
    assert r.returncode == 2
    assert "lacks column(s) TEFF_NOT_THERE" in r.stderr
    assert not (tmp_path / "m.fits").exists()


def test_missing_redshift_rows_are_flagged_not_lost(small_mock, tmp_path):
    rr = small_mock["redrock"][0]
    z = fitsio.read(rr, ext="REDSHIFTS")
    fitsio.write(str(tmp_path / "half.fits"), z[: len(z) // 2], extname="REDSHIFTS",
                 clobber=True)
    rows = build_manifest("desi", small_mock["desi"][:1],
                          redshift_files=[str(tmp_path / "half.fits")])
    n = fitsio.read_header(small_mock["desi"][0], "FIBERMAP")["NAXIS2"]
    assert rows.size == n
    no_z = (rows["FLAGS"] & flags.flag("NO_REDSHIFT")) != 0
    assert no_z.sum() == n - len(z) // 2
    assert np.isnan(rows["Z"][no_z]).all() and np.isfinite(rows["Z"][~no_z]).all()
    assert not flags.is_fatal(rows["FLAGS"][no_z]).any()  # still processed, rest frame assumed


def test_wrong_checkpoints_and_inputs_are_clear_errors(transfer_run, tmp_path, tool_env):
    d = transfer_run["dir"]
    cfg = transfer_run["config"]
    desi = transfer_run["index"]["desi"]
    # a pretrained checkpoint where a candidate is expected
    r = _cli(["evaluate", "--config", cfg, "--checkpoints", d / "pretrained.pt", "--spectra",
              desi, "--metrics", tmp_path / "m.ecsv", "--metrics-md", tmp_path / "m.md",
              "--selection", tmp_path / "s.ecsv", "--summary", tmp_path / "x.ecsv",
              "--predictions", tmp_path / "p.h5"], tool_env)
    assert r.returncode == 2 and "not a fine-tuned candidate checkpoint" in r.stderr
    # a SpecFormer checkpoint handed to fine-tuning of the MLP
    save_checkpoint(tmp_path / "sf.pt", Checkpoint("specformer", {}, {}, {}))
    r = _cli(["finetune", "--config", cfg, "--model", "mlp", "--strategy", "full",
              "--pretrained", tmp_path / "sf.pt", "--spectra", desi, "--output",
              tmp_path / "o.pt"], tool_env)
    assert r.returncode == 2 and "holds model 'specformer'" in r.stderr
    assert not (tmp_path / "o.pt").exists()
    # inference without its selection table
    r = _cli(["infer", "--config", cfg, "--checkpoints", *transfer_run["cands"].values(),
              "--selection", tmp_path / "absent.ecsv", "--spectra", desi, "--output",
              tmp_path / "inf" / "index.h5"], tool_env)
    assert r.returncode == 2 and "cannot read the selection" in r.stderr


@pytest.mark.parametrize("value, message", [
    ("finetune: {strategies: [zeroshot, prompt]}", "'prompt' is not allowed"),
    ("inference: {router: transformer_full}", "inference.router"),
    ("finetune: {val_fraction: 0.9}", "finetune.val_fraction"),
])
def test_bad_config_values_are_one_line(tmp_path, tool_env, value, message):
    (tmp_path / "c.yaml").write_text(value + "\n")
    r = _cli(["config", "--config", tmp_path / "c.yaml"], tool_env)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_vac_refuses_a_manifest_that_does_not_match(transfer_run, small_mock, tmp_path,
                                                    tool_env, mpiexec):
    from specbridge.io.manifest import write_manifest

    d = transfer_run["dir"]
    other = build_manifest("desi", small_mock["desi"][1:])  # one file fewer: rows shift
    write_manifest(tmp_path / "other.fits", other)
    ev = tmp_path / "ev"
    cands = list(transfer_run["cands"].values())
    _cli(["evaluate", "--config", transfer_run["config"], "--checkpoints", *cands,
          "--spectra", transfer_run["index"]["desi"], "--metrics", ev / "m.ecsv",
          "--metrics-md", ev / "m.md", "--selection", ev / "s.ecsv", "--summary",
          ev / "x.ecsv", "--predictions", ev / "p.h5"], tool_env)
    _cli(["infer", "--config", transfer_run["config"], "--checkpoints", *cands,
          "--selection", ev / "s.ecsv", "--spectra", transfer_run["index"]["desi"],
          "--output", tmp_path / "inf" / "index.h5"], tool_env)
    r = _cli(["vac", "--config", transfer_run["config"], "--predictions",
              tmp_path / "inf" / "index.h5", "--manifest", tmp_path / "other.fits", "--fits",
              tmp_path / "v.fits", "--hdf5", tmp_path / "v.h5"], tool_env)
    assert r.returncode == 2 and ("wrong manifest" in r.stderr or "outside" in r.stderr)
    assert not (tmp_path / "v.fits").exists()
    assert read_manifest(d / "desi.fits").size == 400


def test_redshift_option_does_not_swallow_the_input_files(small_mock, tmp_path, tool_env):
    """``--redshifts FILE coadd.fits``: the coadd is an input file, not a second redshift file."""
    out = tmp_path / "m.fits"
    r = _cli(["manifest", "--survey", "desi", "--output", out, "--redshifts",
              small_mock["redrock"][0], small_mock["desi"][0]], tool_env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_manifest(out)
    n = fitsio.read_header(small_mock["desi"][0], "FIBERMAP")["NAXIS2"]
    assert rows.size == n
    assert (rows["FLAGS"] & flags.flag("NO_REDSHIFT") == 0).all()


def test_full_disk_during_preprocessing_is_one_line(small_mock, tmp_path, tool_env):
    """Shards written to a full file system (a 300 kB tmpfs): one line naming the shard and
    'disk full', exit 2, and nothing that looks complete left behind."""
    from specbridge.io.manifest import write_manifest

    write_manifest(tmp_path / "m.fits", build_manifest("lamost", small_mock["lamost"][:120]))
    out = tmp_path / "tiny"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(out)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        r = _cli(["preprocess", "--manifest", tmp_path / "m.fits", "--output",
                  out / "index.h5", "--spectra-per-shard", "40"], tool_env)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "failed: disk full" in r.stderr and "preprocess: shard" in r.stderr
        assert not (out / "index.h5").exists()
        assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)
