# Sharded inference over all DESI spectra, regime routing, and the value-added catalogue.


rule infer:
    """Every candidate's predictions for every DESI spectrum (MPI over shards, restartable)."""
    input:
        unpack(candidate_inputs),
        selection=out("evaluation", "selection.ecsv"),
        calibration=out("evaluation", "calibration.ecsv"),
    output:
        out("inference", "index.h5"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("infer"),
        sources=candidate_source_args,
    log:
        log_path("infer"),
    benchmark:
        benchmark_path("infer")
    threads: config["inference"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["inference"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=120,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge infer --config {params.config} "
        "--checkpoints {input.checkpoints} --selection {input.selection} "
        "--calibration {input.calibration} "
        "{params.sources} --output {output} > {log} 2>&1"


rule vac:
    """The value-added catalogue: every observation (FITS + HDF5) and DESI's layout (per-HEALPix
    files, merged catalogues per SURVEY-PROGRAM) under a versioned directory."""
    input:
        predictions=out("inference", "index.h5"),
        manifest=out("manifest", "desi.fits"),
    output:
        fits=vac_outputs()[0],
        hdf5=vac_outputs()[1],
        tree=directory(vac_outputs()[2]),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("vac"),
    log:
        log_path("vac"),
    benchmark:
        benchmark_path("vac")
    threads: 1
    resources:
        nodes=1,
        gpu=0,
        runtime=60,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "specbridge vac --config {params.config} --predictions {input.predictions} "
        "--manifest {input.manifest} --fits {output.fits} --hdf5 {output.hdf5} "
        "--tree {output.tree} > {log} 2>&1"
