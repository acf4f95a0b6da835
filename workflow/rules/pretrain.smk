# Pretraining on LAMOST: spectrum MLP and SpecFormer (one DDP job each), embeddings, embedding MLP.


rule pretrain_mlp:
    """The spectrum MLP on LAMOST spectra with reference labels (torch DDP)."""
    input:
        spectra=preprocessed("lamost"),
        holdout=preprocessed("desi"),
    output:
        pretrained("mlp"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("pretrain"),
    log:
        log_path("pretrain_mlp"),
    benchmark:
        benchmark_path("pretrain_mlp")
    threads: training_threads()
    resources:
        mpi="mpiexec",
        tasks=config["training"]["ddp_tasks"],
        nodes=1,
        gpu=0,
        runtime=240,
        mem_mb=16000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge pretrain --config {params.config} "
        "--model mlp --spectra {input.spectra} --holdout {input.holdout} --output {output} "
        "> {log} 2>&1"


rule pretrain_specformer:
    """The SpecFormer foundation model, self-supervised masked-patch reconstruction (torch DDP)."""
    input:
        spectra=preprocessed("lamost"),
        holdout=preprocessed("desi"),
    output:
        pretrained("specformer"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("pretrain"),
    log:
        log_path("pretrain_specformer"),
    benchmark:
        benchmark_path("pretrain_specformer")
    threads: training_threads()
    resources:
        mpi="mpiexec",
        tasks=config["training"]["ddp_tasks"],
        nodes=1,
        gpu=0,
        runtime=480,
        mem_mb=16000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge pretrain --config {params.config} "
        "--model specformer --spectra {input.spectra} --holdout {input.holdout} "
        "--output {output} > {log} 2>&1"


rule embed:
    """SpecFormer embeddings (mean over output tokens, standardised) of a survey's spectra."""
    input:
        model=pretrained("specformer"),
        spectra=preprocessed("{survey}"),
    output:
        embeddings("{survey}"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("embed"),
        ood=ood_scores_arg,
        degraded=degraded_copies_arg,
    log:
        log_path("embed_{survey}"),
    benchmark:
        benchmark_path("embed_{survey}")
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
        "{resources.mpi} -n {resources.tasks} specbridge embed --config {params.config} "
        "--model {input.model} --spectra {input.spectra} --output {output} {params.ood} "
        "{params.degraded} "
        "> {log} 2>&1"


rule pretrain_emb_mlp:
    """The MLP on SpecFormer embeddings of LAMOST spectra (torch DDP)."""
    input:
        embeddings=embeddings("lamost"),
        spectra=preprocessed("lamost"),
        holdout=preprocessed("desi"),
    output:
        pretrained("emb_mlp"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("pretrain"),
    log:
        log_path("pretrain_emb_mlp"),
    benchmark:
        benchmark_path("pretrain_emb_mlp")
    threads: training_threads()
    resources:
        mpi="mpiexec",
        tasks=config["training"]["ddp_tasks"],
        nodes=1,
        gpu=0,
        runtime=120,
        mem_mb=8000,
    conda:
        "../../envs/specbridge.yaml"
    shell:
        "{resources.mpi} -n {resources.tasks} specbridge pretrain --config {params.config} "
        "--model emb_mlp --spectra {input.spectra} --embeddings {input.embeddings} "
        "--holdout {input.holdout} --output {output} > {log} 2>&1"
