"""The Snakefile: whole DAG in a dry run, lint-clean, every rule with log and benchmark, and
a stage with a missing input fails with one clear line and writes nothing."""

from __future__ import annotations

import re
import subprocess

EXPECTED_RULES = {
    "mock_survey": 1, "manifest": 2, "preprocess": 2, "pretrain_mlp": 1,
    "pretrain_specformer": 1, "embed": 2, "pretrain_emb_mlp": 1, "finetune": 9,
    "evaluate": 1, "infer": 1, "vac": 1, "report": 1, "validate_real": 3,
    "real_scoreboard": 1, "all": 1,
}


def _snakemake(repo, workdir, env, *args, timeout=300):
    # reference_data is relative to the working directory: point it at the shared data
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), *args,
           "--configfile", str(repo / "config.yaml"), "--config",
           f"reference_data={repo.parent / 'shared' / 'data'}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_dry_run_prints_whole_dag(repo, tmp_path, tool_env, shared_data):
    r = _snakemake(repo, tmp_path, tool_env, "-n")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert {k: int(v) for k, v in counts.items() if k != "total"} == EXPECTED_RULES
    assert int(counts["total"]) == sum(EXPECTED_RULES.values())


def test_lint_is_clean(repo, tool_env):
    r = subprocess.run(["snakemake", "--lint"], cwd=repo, capture_output=True, text=True,
                       env=tool_env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr


def test_every_rule_has_log_benchmark_and_resources(repo):
    for smk in sorted((repo / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"^rule ", text, flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            if "localrule: True" in block:
                continue
            for directive in ("log:", "benchmark:", "resources:", "conda:"):
                assert directive in block, f"rule {name} in {smk.name} lacks {directive}"
            for res in ("nodes=", "runtime=", "mem_mb="):
                assert res in block, f"rule {name} in {smk.name} lacks resource {res}"
            assert "lambda" not in block, f"rule {name} uses a lambda"


def test_missing_input_fails_clearly_and_writes_nothing(tmp_path, tool_env):
    out = tmp_path / "finetuned.pt"
    r = subprocess.run(["specbridge", "finetune", "--config", "config.yaml", "--model", "mlp",
                        "--strategy", "lora", "--pretrained", str(tmp_path / "p.pt"),
                        "--spectra", "index.h5", "--output", str(out)], capture_output=True,
                       text=True, env=tool_env)
    assert r.returncode == 2
    assert "cannot read pretrained checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
