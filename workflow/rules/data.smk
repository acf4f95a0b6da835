# Data stage: the embedded default's labelled mock survey, then one manifest per survey.


rule mock_survey:
    """Generate the labelled mock survey (LAMOST and DESI files, APOGEE-like labels) from MILES
    (MPI over files, as many ranks as preprocessing)."""
    output:
        lamost=mock_outputs()["lamost"],
        desi=mock_outputs()["desi"],
        redrock=mock_outputs()["redrock"],
        labels=mock_outputs()["labels"],
    params:
        config=CONFIG_FILE,
        settings=stage_settings("mock"),
    log:
        log_path("mock_survey"),
    benchmark:
        benchmark_path("mock_survey")
    threads: config["preprocess"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["preprocess"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=60,
        mem_mb=4000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge mock --config {params.config} "
        "--lamost-list {output.lamost} --desi-list {output.desi} "
        "--redrock-list {output.redrock} --labels {output.labels} "
        "> {log} 2>&1"


rule manifest:
    """One row per input spectrum of a survey, cross-matched to the label catalogue, the target
    selection flagged (MPI over files, as many ranks as preprocessing; one manifest written)."""
    input:
        unpack(manifest_inputs),
    output:
        out("manifest", "{survey}.fits"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("manifest"),
        sources=manifest_source_args,
    log:
        log_path("manifest_{survey}"),
    benchmark:
        benchmark_path("manifest_{survey}")
    threads: config["preprocess"]["mpi_tasks"]
    resources:
        mpi="mpiexec",
        tasks=config["preprocess"]["mpi_tasks"],
        nodes=1,
        gpu=0,
        runtime=60,
        mem_mb=4000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge manifest --config {params.config} "
        "--survey {wildcards.survey} "
        "{params.sources} --output {output} > {log} 2>&1"
