# Helpers shared by the workflow: config validation, output paths, input functions.

import hashlib
import json
import sys
from pathlib import Path

import yaml
from specbridge.config import ConfigError, config_hash, validate_config
from specbridge.stages import config_sections

try:
    _validated = validate_config(config)
except ConfigError as err:
    sys.exit(f"specbridge: invalid configuration: {err}")
config.clear()
config.update(_validated)

OUT = config["outdir"]
SURVEYS = ["lamost", "desi"]
MODELS = config["finetune"]["models"]
STRATEGIES = config["finetune"]["strategies"]
SPECFORMER_LORA = config["finetune"]["lora"]["specformer"]
CANDIDATES = [f"{m}_{s}" for m in MODELS for s in STRATEGIES] + (
    ["specformer_lora"] if SPECFORMER_LORA else []
)


def resolved_config_path():
    """The validated config with every default filled, as `specbridge <stage> --config` reads it.

    Rewritten (atomically) only when its content changes. Reruns are driven by each rule's
    `settings` param (stage_settings), so a change reruns only the rules it concerns.
    """
    path = Path(OUT) / "config" / "resolved.yaml"
    header = f"# config hash {config_hash(config)}"
    text = "\n".join([header, yaml.safe_dump(config, sort_keys=True)])
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CONFIG_FILE = resolved_config_path()


def out(*parts):
    """A path under the run's output directory."""
    return str(Path(OUT, *parts))


def log_path(name):
    return out("logs", f"{name}.log")


def benchmark_path(name):
    return out("benchmarks", f"{name}.tsv")


# ---- data ------------------------------------------------------------------------------------


def mock_outputs():
    return {
        "lamost": out("mock", "lamost_files.txt"),
        "desi": out("mock", "desi_files.txt"),
        "redrock": out("mock", "desi_redrock_files.txt"),
        "labels": out("mock", "apogee_allstar.fits"),
    }


def manifest_inputs(wildcards):
    """The file lists that the manifest of a survey is built from (mock survey or nothing)."""
    if config["data"]["source"] == "mock":
        files = mock_outputs()
        inputs = {"files": files[wildcards.survey], "labels": files["labels"]}
        if wildcards.survey == "desi":
            inputs["redrock"] = files["redrock"]
        return inputs
    return {}


def manifest_source_args(wildcards, input):
    """Command-line arguments naming the manifest's inputs: the mock survey's file list and
    label catalogue, or nothing (the config's globs are read by `specbridge manifest`)."""
    if config["data"]["source"] != "mock":
        return ""
    args = f"--files-from {input.files} --labels {input.labels} --label-format apogee_allstar"
    if wildcards.survey == "desi":
        args += f" --redshifts-from {input.redrock}"
    return args


# ---- models ----------------------------------------------------------------------------------


def preprocessed(survey):
    return out("preprocessed", survey, "index.h5")


def embeddings(survey):
    return out("embeddings", survey, "index.h5")


def ood_scores_arg(wildcards):
    """embed's out-of-domain scores are read for the catalogue (DESI) only."""
    return "" if wildcards.survey == "desi" else "--no-ood-scores"


def degraded_copies_arg(wildcards):
    """With training.snr_augment on, the pretraining survey's embeddings also hold a
    degraded copy of each spectrum, for the S/N-augmented embedding MLP."""
    a = config["training"].get("snr_augment") or {}
    if wildcards.survey != "lamost" or not a.get("fraction", 0) > 0:
        return ""
    return f"--degraded-snr-min {a['snr_min']}"  # the schema fills snr_min


def training_threads():
    """Cores a local training job reserves: its DDP ranks times each rank's threads."""
    t = config["training"]
    return t["ddp_tasks"] * t["threads_per_task"]


def pretrained(model):
    return out("models", model, "pretrained.pt")


def finetuned(candidate):
    model, strategy = candidate.rsplit("_", 1)
    return out("models", model, f"finetuned_{strategy}.pt")


def finetune_inputs(wildcards):
    """Pretrained weights of the model plus the DESI arrays it reads (embeddings for emb_mlp;
    for the SpecFormer with LoRA, the SpecFormer and the embedding MLP on top)."""
    if wildcards.model == "specformer":
        return {
            "pretrained": pretrained("emb_mlp"),
            "specformer": pretrained("specformer"),
            "spectra": preprocessed("desi"),
        }
    inputs = {"pretrained": pretrained(wildcards.model), "spectra": preprocessed("desi")}
    if wildcards.model == "emb_mlp":
        inputs["embeddings"] = embeddings("desi")
    return inputs


def finetune_source_args(wildcards, input):
    """--spectra, and --embeddings for the embedding MLP."""
    args = f"--spectra {input.spectra}"
    if wildcards.model == "emb_mlp":
        args += f" --embeddings {input.embeddings}"
    if wildcards.model == "specformer":
        args += f" --specformer {input.specformer}"
    return args


def candidate_inputs(wildcards=None):
    """Every fine-tuned candidate's checkpoint, plus what the embedding candidates read."""
    inputs = {"checkpoints": [finetuned(c) for c in CANDIDATES], "spectra": preprocessed("desi")}
    if "emb_mlp" in MODELS:
        inputs["embeddings"] = embeddings("desi")
    return inputs


def candidate_source_args(wildcards, input):
    """--spectra, and --embeddings when embedding candidates are configured."""
    args = f"--spectra {input.spectra}"
    if "emb_mlp" in MODELS:
        args += f" --embeddings {input.embeddings}"
    return args


INFER_PARTS = int(config["inference"]["array_tasks"])


def infer_part_indexes():
    """The partial prediction indexes of job-array inference (inference.array_tasks > 0)."""
    return [out("inference", f"part-{k:04d}-of-{INFER_PARTS:04d}.h5") for k in range(INFER_PARTS)]


def infer_part_arg(wildcards):
    """--part K/N of one array task."""
    return f"--part {int(wildcards.part)}/{INFER_PARTS}"


def stage_settings(stage):
    """A short hash of the config sections that `stage` reads, as the stage itself declares
    them (specbridge.stages.<stage>.CONFIG_SECTIONS): a rule's params change exactly when one
    of them does, and a rule cannot forget a section its stage reads."""
    sections = config_sections(stage)
    blob = json.dumps({s: config.get(s) for s in sections}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---- real labelled LAMOST spectra -------------------------------------------------------------


def real_sets():
    """Names of the real_validation sets whose files exist on this machine."""
    import glob

    ref = str(config["reference_data"])
    return [
        s["name"]
        for s in config["real_validation"]
        if any(glob.glob(g.replace("{reference_data}", ref)) for g in s["files"])
    ]


def real_tables(wildcards=None):
    return [out("real", f"{name}.ecsv") for name in real_sets()]


def real_args(wildcards, input):
    """--real and the tables, when any real set is present."""
    return f"--real {' '.join(input.real)}" if real_sets() else ""


def label_efficiency_input(wildcards=None):
    """The label-efficiency benchmark's table for the report, when configured."""
    path = config["report"].get("label_efficiency")
    return [path] if path else []


def label_efficiency_arg(wildcards, input):
    """--label-efficiency and the table, when configured."""
    return f"--label-efficiency {input.label_efficiency}" if input.label_efficiency else ""


# ---- final products --------------------------------------------------------------------------


def vac_outputs():
    """The catalogue of every observation (FITS, HDF5) and the directory of its DESI layout
    (per-HEALPix files, merged catalogues per SURVEY-PROGRAM), all carrying the version."""
    name, version = config["vac"]["name"], config["vac"]["version"]
    return [out("vac", f"{name}-{version}.fits"), out("vac", f"{name}-{version}.h5"),
            out("vac", version)]


def report_outputs():
    return [out("report", "index.html")]
