# Preprocessing: one MPI job per survey (Numba kernels inside each rank), HDF5 shards + index.


rule preprocess:
    """Rest-frame shift, resampling to the common grid, continuum normalisation, masks."""
    input:
        out("manifest", "{survey}.fits"),
    output:
        preprocessed("{survey}"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("preprocess"),
    log:
        log_path("preprocess_{survey}"),
    benchmark:
        benchmark_path("preprocess_{survey}")
    threads: config["preprocess"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["preprocess"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=120,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge preprocess --config {params.config} "
        "--manifest {input} --output {output} > {log} 2>&1"
