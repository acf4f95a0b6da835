"""`snakemake --profile slurm` on a real two-node SLURM cluster (tests/cluster/local_slurm.sh:
the second node a slurmd in its own network namespace): MPI ranks and torch.distributed ranks
started by srun inside SLURM jobs, on one node and across both."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.slurm

# CPU-only overrides of the site settings in slurm/site.env (2-core test nodes, no GPU).
CPU_NODE = {
    "SPECBRIDGE_SLURM_ACCOUNT": "",
    "SPECBRIDGE_SLURM_PARTITION": "debug",
    "SPECBRIDGE_CPU_CONSTRAINT": "",
    "SPECBRIDGE_GPU_CONSTRAINT": "",
    "SPECBRIDGE_GPUS": "0",
    "SPECBRIDGE_CPU_TASKS": "2",
    "SPECBRIDGE_TRAIN_TASKS": "2",
    "SPECBRIDGE_CPU_CPUS_PER_TASK": "1",
    "SPECBRIDGE_GPU_CPUS_PER_TASK": "1",
    "SPECBRIDGE_VAC_TASKS": "2",
    "SPECBRIDGE_GPUS_PER_ARRAY_TASK": "0",
}


def profile_env(repo, tool_env, overrides):
    """The environment `source slurm/site.env` produces on top of ``overrides``."""
    env = {**tool_env, **overrides}
    r = subprocess.run(["bash", "-c", f"source {repo / 'slurm' / 'site.env'} && env -0"],
                       capture_output=True, env=env, check=True)
    return dict(kv.split("=", 1) for kv in r.stdout.decode().split("\0") if "=" in kv)


def run_profile(repo, workdir, env, *targets, configfiles=(), timeout=600):
    cmd = ["snakemake", *targets, "-s", str(repo / "Snakefile"), "-d", str(workdir),
           "--profile", str(repo / "slurm"), "--slurm-status-command", "squeue",
           "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
           "--retries", "0", "--configfile", str(repo / "config.yaml"), *map(str, configfiles)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_cluster_check_mpi_and_ddp_under_srun(slurm_cluster, repo, tmp_path, tool_env):
    env = profile_env(repo, tool_env, CPU_NODE)
    r = run_profile(repo, tmp_path, env, "cluster_check")
    logs = "\n".join(p.read_text() for p in tmp_path.glob("results/logs/*.log"))
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}\n{logs}"
    out = r.stdout + r.stderr
    assert "has been submitted with SLURM jobid" in out  # really went through sbatch

    mpi = json.loads((tmp_path / "results" / "checks" / "mpi.json").read_text())
    assert mpi["ok"] and mpi["world_size"] == 2 and mpi["ranks"] == [0, 1]
    assert len({m["pid"] for m in mpi["members"]}) == 2

    ddp = json.loads((tmp_path / "results" / "checks" / "ddp.json").read_text())
    assert ddp["ok"] and ddp["launcher"] == "srun" and ddp["backend"] == "gloo"
    assert ddp["world_size"] == 2 and ddp["allreduce_sum"] == 3.0
    assert [m[0] for m in ddp["members"]] == [0, 1]


def test_srun_without_pmi_is_caught(slurm_cluster, repo, tmp_path, tool_env):
    """Without PMI every task is a lone rank 0 of size 1; check-mpi must fail, not pass."""
    env = profile_env(repo, tool_env, {**CPU_NODE, "SPECBRIDGE_MPI_LAUNCHER": "srun --mpi=none"})
    r = run_profile(repo, tmp_path, env, "check_mpi")
    assert r.returncode != 0
    log = (tmp_path / "results" / "logs" / "check_mpi.log").read_text()
    assert "world size 1, expected 2" in log


def test_training_ddp_over_two_nodes_matches_one_process(slurm_cluster, small_mock, tmp_path,
                                                         tool_env):
    """DDP over the test cluster's two nodes, one rank per node (srun --nodes=2: ranks from
    SLURM_PROCID / SLURM_STEP_NUM_TASKS, local rank 0 on each, the rendezvous at the first
    node's address over the network between them), reproduces a single-process run with the
    same global batch."""
    import shutil

    import torch
    import yaml

    from specbridge.io.labels import read_apogee_allstar
    from specbridge.io.manifest import build_manifest, write_manifest
    from specbridge.models.checkpoint import load_checkpoint

    rows = build_manifest("lamost", small_mock["lamost"][:300],
                          labels=read_apogee_allstar(small_mock["labels"]))
    write_manifest(tmp_path / "m.fits", rows)
    index = tmp_path / "pre" / "index.h5"
    r = subprocess.run(["specbridge", "preprocess", "--manifest", str(tmp_path / "m.fits"),
                        "--output", str(index)], capture_output=True, text=True,
                       env=tool_env, timeout=600)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"mlp": {"hidden": [64, 32], "dropout": 0.0}},
        "training": {"batch_size": 32, "epochs": 2, "lr": 0.01, "optimizer": "sgd",
                     "val_fraction": 0.15}}))
    base = ["specbridge", "pretrain", "--config", str(cfg), "--model", "mlp", "--spectra",
            str(index)]
    one = subprocess.run([*base, "--output", str(tmp_path / "one.pt")], capture_output=True,
                         text=True, env=tool_env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    srun = shutil.which("srun")
    two = subprocess.run([srun, "--mpi=pmi2", "--nodes=2", "--ntasks-per-node=1", "-c", "1",
                          "-p", "debug", *base, "--output", str(tmp_path / "two.pt")],
                         capture_output=True, text=True, env=tool_env, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "2 rank(s)" in two.stderr  # one DDP job of two ranks, not two lone processes
    # two hosts, local rank 0 on each, the rendezvous at the first node's name
    assert "2 ranks on 2 host(s)" in two.stderr and "local ranks 0,0" in two.stderr, \
        two.stderr[-2000:]
    assert "rendezvous at sbn1:" in two.stderr and "via srun" in two.stderr
    a = load_checkpoint(tmp_path / "one.pt")
    b = load_checkpoint(tmp_path / "two.pt")
    for k, v in a.state_dict.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(b.state_dict[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_mpi_preprocessing_over_two_nodes_matches_one_rank(slurm_cluster, small_mock,
                                                           tmp_path, tool_env):
    """MPI preprocessing over the test cluster's two nodes, one rank per node (srun --nodes=2,
    MPICH through PMI2, the ranks in different network namespaces), writes the same shards,
    value for value, as one process."""
    import shutil

    import h5py

    from specbridge.io.manifest import build_manifest, write_manifest
    from specbridge.io.shards import read_index, read_shard

    rows = build_manifest("desi", small_mock["desi"])
    write_manifest(tmp_path / "m.fits", rows)

    def preprocess(out, launcher=()):
        r = subprocess.run([*launcher, "specbridge", "preprocess", "--manifest",
                            str(tmp_path / "m.fits"), "--output", str(out),
                            "--spectra-per-shard", "100"],
                           capture_output=True, text=True, env=tool_env, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r

    preprocess(tmp_path / "one" / "index.h5")
    srun = shutil.which("srun")
    two = preprocess(tmp_path / "two" / "index.h5",
                     [srun, "--mpi=pmi2", "--nodes=2", "--ntasks-per-node=1", "-c", "1",
                      "-p", "debug"])
    assert "over 2 ranks" in two.stderr, two.stderr[-2000:]
    one_idx, two_idx = read_index(tmp_path / "one" / "index.h5"), \
        read_index(tmp_path / "two" / "index.h5")
    assert len(one_idx) >= 2
    assert [(s["first_row"], s["n"], s["fingerprint"]) for s in one_idx] == \
        [(s["first_row"], s["n"], s["fingerprint"]) for s in two_idx]
    for a, b in zip(one_idx, two_idx, strict=True):
        with h5py.File(a["path"]) as h:
            keys = tuple(h.keys())
        da, db = read_shard(a["path"], keys), read_shard(b["path"], keys)
        for k in keys:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)


SMALL_PIPELINE = {
    "data": {"mock": {"n_lamost": 400, "n_lamost_unlabelled": 200, "n_desi": 400,
                      "desi_per_file": 200,
                      "desi_resolution_hdu": False}},
    "preprocess": {"spectra_per_shard": 150},
    "models": {"mlp": {"hidden": [64, 32], "dropout": 0.0},
               "specformer": {"d_model": 32, "n_layers": 1, "n_heads": 2},
               "emb_mlp": {"hidden": [32], "dropout": 0.0}},
    "training": {"epochs": 2, "batch_size": 32},
    # two strategies (the MLP's and the embedding MLP's zero-shot and LoRA, and the SpecFormer's
    # LoRA): every kind of job runs under SLURM, with 4 fewer SLURM jobs than all four
    "finetune": {"epochs": 2, "n_train": 100, "val_fraction": 0.25, "test_fraction": 0.25,
                 "strategies": ["zeroshot", "lora"]},
}


def _job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table snakemake prints: {rule: count}."""
    import re

    block = text.split("Job stats:", 1)[1] if "Job stats:" in text else ""
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", block, flags=re.M)
            if k != "total"}


def test_whole_pipeline_under_slurm_then_rule_level_rerun(slurm_cluster, repo, tmp_path,
                                                          tool_env, shared_data):
    """mock -> VAC + report as SLURM jobs (MPI preprocessing, DDP pretraining and fine-tuning,
    sharded inference, the VAC, each with 2 ranks under srun); then --forcerun of one
    fine-tuned checkpoint recomputes only that fine-tune and what depends on it."""
    import yaml

    from specbridge.vac.catalogue import read_fits_tables

    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({**SMALL_PIPELINE, "reference_data": str(shared_data)}))
    env = profile_env(repo, tool_env, CPU_NODE)
    r = run_profile(repo, tmp_path, env, "all", configfiles=[small], timeout=1800)
    res = tmp_path / "results"
    logs = {p.stem: p.read_text() for p in (res / "logs").glob("*.log")}
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout + r.stderr
    assert out.count("has been submitted with SLURM jobid") >= 20
    assert "over 2 ranks" in logs["preprocess_desi"]
    assert "2 rank(s)" in logs["pretrain_mlp"] and "2 rank(s)" in logs["finetune_mlp_lora"]
    assert "[rank 0/2]" in logs["infer"] and "(2 rank(s))" in logs["vac"]
    vac = read_fits_tables(res / "vac" / "specbridge-vac-v1.fits")
    assert len(vac["PARAMS"]) == 400
    assert (res / "report" / "index.html").exists()

    upstream = [res / "preprocessed" / "desi" / "index.h5", res / "models" / "mlp" /
                "pretrained.pt", res / "embeddings" / "desi" / "index.h5"]
    before = {p: p.stat().st_mtime_ns for p in upstream}
    lora = res / "models" / "mlp" / "finetuned_lora.pt"
    r = run_profile(repo, tmp_path, env, "all", "--forcerun", str(lora.relative_to(tmp_path)),
                    configfiles=[small], timeout=1800)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    ran = _job_counts(r.stdout + r.stderr)
    assert ran == {"finetune": 1, "evaluate": 1, "infer": 1, "vac": 1, "report": 1, "all": 1}
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    again = read_fits_tables(res / "vac" / "specbridge-vac-v1.fits")
    assert len(again["PARAMS"]) == 400

    # Rerun triggers come from the stages' own config declarations: moving the regime
    # threshold reruns validate_real (its figures use it), and nothing upstream of evaluation.
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump({"evaluation": {"feh_threshold": -0.8}}))
    r = subprocess.run(["snakemake", "-n", "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
                        "--configfile", str(repo / "config.yaml"), str(small), str(moved)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = _job_counts(r.stdout + r.stderr)
    n_real = len(list((res / "real").glob("*.ecsv")))
    assert n_real >= 1 and plan.get("validate_real") == n_real, plan
    assert {"evaluate", "infer", "report"} <= set(plan), plan
    assert not {"preprocess", "pretrain_mlp", "finetune", "embed"} & set(plan), plan


# ---- the sbatch call the profile produces, without a cluster ----------------------------------

FAKE_SBATCH = """#!/bin/bash
# Records its arguments (NUL-separated, one file per call) and refuses the job, so that
# snakemake stops right after its first submissions.
printf '%s\\0' "$@" > "$(mktemp "$FAKE_SBATCH_DIR/call.XXXXXX")"
cat > /dev/null
echo "fake sbatch: not submitting" >&2
exit 1
"""


def _fake_slurm_bin(tmp_path, account=""):
    """sbatch that records its calls, and inert sacct/sacctmgr/sinfo/squeue so that nothing
    reaches a real cluster: sacct guesses no account, sinfo shows no default partition."""
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH, "sacctmgr": f"#!/bin/sh\necho '{account}'\n",
               "sinfo": "#!/bin/sh\necho PARTITION\n"}
    for tool in ("sacct", "sshare", "squeue", "scancel", "scontrol", "sinfo", "sacctmgr",
                 "sbatch"):
        p = bin_dir / tool
        p.write_text(scripts.get(tool, "#!/bin/sh\nexit 0\n"))
        p.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("site", ["empty", "set"])
def test_profile_passes_no_empty_site_values_to_sbatch(site, repo, tmp_path, tool_env):
    """The real sbatch arguments of `snakemake --profile slurm cluster_check` (no cluster needed):
    an empty QOS / constraint / account / partition gives no option at all, never `--qos=''` or
    `-C ''`; set values appear once, as given."""
    values = {"empty": {"SPECBRIDGE_SLURM_ACCOUNT": "", "SPECBRIDGE_SLURM_PARTITION": "",
                        "SPECBRIDGE_SLURM_QOS": "", "SPECBRIDGE_CPU_CONSTRAINT": "",
                        "SPECBRIDGE_GPU_CONSTRAINT": ""},
              "set": {"SPECBRIDGE_SLURM_ACCOUNT": "m1234", "SPECBRIDGE_SLURM_PARTITION": "debug",
                      "SPECBRIDGE_SLURM_QOS": "regular", "SPECBRIDGE_CPU_CONSTRAINT": "cpu",
                      "SPECBRIDGE_GPU_CONSTRAINT": "gpu"}}[site]
    env = profile_env(repo, tool_env, {**CPU_NODE, **values})
    calls_dir = tmp_path / "sbatch-calls"
    calls_dir.mkdir()
    env["PATH"] = f"{_fake_slurm_bin(tmp_path, values['SPECBRIDGE_SLURM_ACCOUNT'])}:{env['PATH']}"
    env["FAKE_SBATCH_DIR"] = str(calls_dir)
    env.pop("SNAKEMAKE_SLURM_PARTITIONS", None)
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = run_profile(repo, workdir, env, "cluster_check", timeout=120)
    assert r.returncode != 0  # the fake sbatch refuses every job
    calls = {}
    for f in calls_dir.iterdir():
        args = f.read_bytes().decode().split("\0")[:-1]
        calls[args[args.index("--comment") + 1]] = args
    assert set(calls) == {"rule_check_mpi", "rule_check_ddp"}, r.stdout[-3000:] + r.stderr[-3000:]

    for rule, args in calls.items():
        opts = [a for a in args if not a.startswith("--wrap")]
        assert all(a and not a.endswith("=") and a != "''" for a in opts), (rule, opts)
        assert not any(a.startswith(("--gres", "--gpus", "--constraint")) for a in opts), opts
        if site == "empty":
            for flag in ("-A", "--account", "-p", "--partition", "-C"):
                assert flag not in opts, (rule, flag, opts)
            assert not any(a.startswith(("--qos", "--account=", "--partition=")) for a in opts)
        else:
            constraint = "cpu" if rule == "rule_check_mpi" else "gpu"
            assert opts.count("-C") == 1 and opts[opts.index("-C") + 1] == constraint, opts
            assert [a for a in opts if a.startswith("--qos")] == ["--qos=regular"], opts
            assert opts.count("-A") == 1 and opts[opts.index("-A") + 1] == "m1234", opts
            assert opts.count("-p") == 1 and opts[opts.index("-p") + 1] == "debug", opts


def test_job_array_inference_goes_to_sbatch_as_one_array(repo, tmp_path, tool_env):
    """inference.array_tasks = 3: the three infer_part jobs reach sbatch as one job array
    (`--array=1-3`, the profile's slurm-array-jobs), one rank and one GPU per task; the
    inputs are stand-ins (no cluster, nothing runs)."""
    import yaml

    env = profile_env(repo, tool_env, {**CPU_NODE, "SPECBRIDGE_GPUS_PER_ARRAY_TASK": "1"})
    calls_dir = tmp_path / "sbatch-calls"
    calls_dir.mkdir()
    env["PATH"] = f"{_fake_slurm_bin(tmp_path)}:{env['PATH']}"
    env["FAKE_SBATCH_DIR"] = str(calls_dir)
    wd = tmp_path / "wd"
    res = wd / "results"
    for f in [f"models/{m}/finetuned_{s}.pt" for m in ("mlp", "emb_mlp")
              for s in ("zeroshot", "adapter", "lora", "full")] + [
            "models/specformer/finetuned_lora.pt", "preprocessed/desi/index.h5",
            "embeddings/desi/index.h5", "evaluation/selection.ecsv",
            "evaluation/calibration.ecsv"]:
        (res / f).parent.mkdir(parents=True, exist_ok=True)
        (res / f).touch()
    arr = tmp_path / "array.yaml"
    arr.write_text(yaml.safe_dump({"inference": {"array_tasks": 3}}))
    parts = [f"results/inference/part-{k:04d}-of-0003.h5" for k in range(3)]
    r = run_profile(repo, wd, env, "--allowed-rules=infer_part", *parts, configfiles=[arr],
                    timeout=300)
    assert r.returncode != 0  # the fake sbatch refuses every job
    calls = [f.read_bytes().decode().split("\0")[:-1] for f in calls_dir.iterdir()]
    arrays = [a for a in calls if any(x.startswith("--array=") for x in a)]
    assert len(arrays) == 1, [c[:24] for c in calls]
    opts = arrays[0]
    assert "--array=1-3" in opts and opts[opts.index("--comment") + 1].startswith(
        "rule_infer_part")
    assert "--gpus=1" in opts and "--nodes=1" in opts, opts
