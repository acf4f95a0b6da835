# Cluster self-checks: run `snakemake --profile slurm cluster_check` before a long run to see that
# MPI ranks and torch.distributed ranks really form one job on this site.


rule check_mpi:
    """Start `tasks` MPI ranks with the MPI launcher; fail unless they form one world."""
    output:
        out("checks", "mpi.json"),
    log:
        log_path("check_mpi"),
    benchmark:
        benchmark_path("check_mpi")
    threads: config["preprocess"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["preprocess"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=10,
        mem_mb=2000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge check-mpi "
        "--expect-size {resources.tasks} --output {output} > {log} 2>&1"


rule check_ddp:
    """Start `tasks` torch.distributed ranks with the MPI launcher; check an all-reduce."""
    output:
        out("checks", "ddp.json"),
    log:
        log_path("check_ddp"),
    benchmark:
        benchmark_path("check_ddp")
    threads: config["training"]["ddp_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["training"]["ddp_tasks"],
        nodes=1,
        gpu=0,
        runtime=10,
        mem_mb=4000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge check-ddp "
        "--expect-size {resources.tasks} --output {output} > {log} 2>&1"


rule cluster_check:
    """Target: both self-checks."""
    input:
        out("checks", "mpi.json"),
        out("checks", "ddp.json"),
    localrule: True
