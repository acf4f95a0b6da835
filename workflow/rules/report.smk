# The report: one-to-one plots, residuals vs [Fe/H], per-regime tables (also for snakemake --report).


rule report:
    """Figures and tables of the evaluation and the VAC, gathered into one HTML page."""
    input:
        metrics=out("evaluation", "metrics.ecsv"),
        selection=out("evaluation", "selection.ecsv"),
        vac=vac_outputs()[0],
    output:
        out("report", "index.html"),
    params:
        config=CONFIG_FILE,
        settings=section_digest("evaluation"),
    log:
        log_path("report"),
    benchmark:
        benchmark_path("report")
    threads: 1
    resources:
        nodes=1,
        gpu=0,
        runtime=30,
        mem_mb=4000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "specbridge report --config {params.config} --metrics {input.metrics} "
        "--selection {input.selection} --vac {input.vac} --output {output} > {log} 2>&1"
