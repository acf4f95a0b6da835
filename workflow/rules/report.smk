# The report: one-to-one plots, residuals vs [Fe/H], per-regime tables (also for snakemake --report).


rule report:
    """Figures and tables of the evaluation and the VAC, gathered into one HTML page."""
    input:
        metrics=out("evaluation", "metrics.ecsv"),
        selection=out("evaluation", "selection.ecsv"),
        summary=out("evaluation", "summary.ecsv"),
        calibration=out("evaluation", "calibration.ecsv"),
        predictions=out("evaluation", "predictions.h5"),
        vac=vac_outputs()[0],
        real=real_tables,
        scoreboard=out("evaluation", "real_scoreboard.ecsv"),
        specformer=pretrained("specformer"),
        label_efficiency=label_efficiency_input,
    output:
        html=out("report", "index.html"),
        one_to_one=report(
            out("report", "one_to_one.png"),
            caption="../report/one_to_one.rst",
            category="Evaluation",
        ),
        residuals=report(
            out("report", "residual_vs_feh.png"),
            caption="../report/residual_vs_feh.rst",
            category="Evaluation",
        ),
        regimes=report(
            out("report", "regime_sigma.png"),
            caption="../report/regime_sigma.rst",
            category="Evaluation",
        ),
        overview=report(
            out("report", "vac_overview.png"),
            caption="../report/vac_overview.rst",
            category="Catalogue",
        ),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("report"),
        real=real_args,
        label_efficiency=label_efficiency_arg,
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
        "--selection {input.selection} --summary {input.summary} "
        "--predictions {input.predictions} --calibration {input.calibration} "
        "--vac {input.vac} {params.real} "
        "--scoreboard {input.scoreboard} --specformer {input.specformer} "
        "{params.label_efficiency} --output {output.html} "
        "> {log} 2>&1"


rule real_scoreboard:
    """Real labelled sets: bias and robust sigma per label, S/N bin and regime, with bootstrap
    intervals over stars; one table per run (and its markdown)."""
    input:
        real=real_tables,
    output:
        table=out("evaluation", "real_scoreboard.ecsv"),
        markdown=out("evaluation", "real_scoreboard.md"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("scoreboard"),
        real=real_args,
    log:
        log_path("real_scoreboard"),
    benchmark:
        benchmark_path("real_scoreboard")
    localrule: True
    threads: 1
    resources:
        nodes=1,
        gpu=0,
        runtime=10,
        mem_mb=2000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "specbridge scoreboard --config {params.config} {params.real} "
        "--output {output.table} --markdown {output.markdown} > {log} 2>&1"


rule validate_real:
    """Real labelled LAMOST spectra (config real_validation) predicted by the pretrained MLP."""
    input:
        model=pretrained("mlp"),
        specformer=pretrained("specformer"),
    output:
        table=out("real", "{realset}.ecsv"),
        figure=report(
            out("real", "{realset}.png"),
            caption="../report/real_lamost.rst",
            category="Real LAMOST spectra",
        ),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("validate_real"),
    log:
        log_path("validate_real_{realset}"),
    benchmark:
        benchmark_path("validate_real_{realset}")
    threads: 1
    resources:
        nodes=1,
        gpu=0,
        runtime=30,
        mem_mb=4000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "specbridge validate-real --config {params.config} --set {wildcards.realset} "
        "--model {input.model} --specformer {input.specformer} --output {output.table} "
        "--figure {output.figure} > {log} 2>&1"
