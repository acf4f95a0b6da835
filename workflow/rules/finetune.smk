# Transfer to DESI: every pretrained model x every strategy (zero-shot, adapter, LoRA, full).


rule finetune:
    """Fine-tune one pretrained model on the DESI training split with one strategy."""
    input:
        unpack(finetune_inputs),
    output:
        out("models", "{model}", "finetuned_{strategy}.pt"),
    params:
        config=CONFIG_FILE,
        settings=stage_settings("finetune"),
        sources=finetune_source_args,
    log:
        log_path("finetune_{model}_{strategy}"),
    benchmark:
        benchmark_path("finetune_{model}_{strategy}")
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
        "{resources.mpi} -n {resources.tasks} specbridge finetune --config {params.config} "
        "--model {wildcards.model} --strategy {wildcards.strategy} "
        "--pretrained {input.pretrained} {params.sources} --output {output} "
        "> {log} 2>&1"
