# specbridge: LAMOST-pretrained stellar-parameter models transferred to DESI, as a VAC.
#
#   snakemake --cores 2                     the embedded default (config.yaml), locally
#   snakemake --profile slurm               the same rule graph as SLURM jobs (see slurm/)
#   snakemake --profile slurm cluster_check check MPI and torch.distributed on the cluster first
#
# The rule graph is described in README.md and docs/architecture.md; every rule runs one
# `specbridge <stage>` subcommand that can also be run by hand.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    survey="lamost|desi",
    model="mlp|emb_mlp|specformer",
    strategy="zeroshot|adapter|lora|full",
    realset="[A-Za-z0-9_-]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/checks.smk"


rule all:
    input:
        vac_outputs(),
        report_outputs(),
    default_target: True
