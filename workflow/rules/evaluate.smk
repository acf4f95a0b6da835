# Evaluation on the DESI validation and test splits, and the per-regime selection table.


rule evaluate:
    """Metrics per candidate, label, regime and S/N bin with bootstrap intervals; the error
    recalibration; the selection table."""
    input:
        unpack(candidate_inputs),
    output:
        metrics=out("evaluation", "metrics.ecsv"),
        metrics_md=out("evaluation", "metrics.md"),
        selection=out("evaluation", "selection.ecsv"),
        summary=out("evaluation", "summary.ecsv"),
        calibration=out("evaluation", "calibration.ecsv"),
        predictions=out("evaluation", "predictions.h5"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("evaluate"),
        sources=candidate_source_args,
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    threads: 1
    resources:
        nodes=1,
        gpu=0,
        runtime=60,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "specbridge evaluate --config {params.config} --checkpoints {input.checkpoints} "
        "{params.sources} --metrics {output.metrics} --metrics-md {output.metrics_md} "
        "--selection {output.selection} --summary {output.summary} "
        "--calibration {output.calibration} --predictions {output.predictions} > {log} 2>&1"
