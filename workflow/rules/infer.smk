# Sharded inference over all DESI spectra, regime routing, and the value-added catalogue.


if INFER_PARTS == 0:

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

else:

    rule infer_part:
        """Job-array inference: the predictions of one contiguous range of shards (one of
        inference.array_tasks; the SLURM profile submits them as one job array)."""
        input:
            unpack(candidate_inputs),
            selection=out("evaluation", "selection.ecsv"),
            calibration=out("evaluation", "calibration.ecsv"),
        output:
            out("inference", f"part-{{part}}-of-{INFER_PARTS:04d}.h5"),
        wildcard_constraints:
            part=r"\d{4}",
        params:
            config=CONFIG_FILE,
            settings=stage_settings("infer"),
            sources=candidate_source_args,
            part=infer_part_arg,
        log:
            log_path("infer_part-{part}"),
        benchmark:
            benchmark_path("infer_part-{part}")
        threads: 1
        resources:
            nodes=1,
            gpu=0,
            runtime=120,
            mem_mb=8000,
        conda:
            "../../envs/specbridge.yaml"
        shell:
            "specbridge infer --config {params.config} {params.part} "
            "--checkpoints {input.checkpoints} --selection {input.selection} "
            "--calibration {input.calibration} "
            "{params.sources} --output {output} > {log} 2>&1"

    rule infer_merge:
        """Job-array inference: the prediction index from the parts' shards (computes
        nothing; fails naming the shards a part did not write)."""
        input:
            unpack(candidate_inputs),
            parts=infer_part_indexes(),
            selection=out("evaluation", "selection.ecsv"),
            calibration=out("evaluation", "calibration.ecsv"),
        output:
            out("inference", "index.h5"),
        params:
            config=CONFIG_FILE,
            settings=stage_settings("infer"),
            sources=candidate_source_args,
        log:
            log_path("infer_merge"),
        benchmark:
            benchmark_path("infer_merge")
        threads: 1
        resources:
            nodes=1,
            gpu=0,
            runtime=30,
            mem_mb=4000,
        conda:
            "../../envs/specbridge.yaml"
        shell:
            "specbridge infer --config {params.config} --merge-parts {input.parts} "
            "--checkpoints {input.checkpoints} --selection {input.selection} "
            "--calibration {input.calibration} "
            "{params.sources} --output {output} > {log} 2>&1"


rule vac:
    """The value-added catalogue: every observation (FITS + HDF5) and DESI's layout (per-HEALPix
    files, merged catalogues per SURVEY-PROGRAM) under a versioned directory (MPI: the
    per-HEALPix files spread over the ranks)."""
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
    threads: config["vac"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["vac"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=60,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge vac --config {params.config} "
        "--predictions {input.predictions} "
        "--manifest {input.manifest} --fits {output.fits} --hdf5 {output.hdf5} "
        "--tree {output.tree} > {log} 2>&1"
