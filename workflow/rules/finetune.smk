rule finetune_assembly:
    input:
        ranking="results/proxy/{budget}/ranking.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code(
            "stages/finetune",
            "training",
            "distributed",
            "stitching",
            "stitch_training",
            "artifacts",
            "export",
            "model_card",
        ),
    # the artifact dery.load_assembly reads: spec + weights + model card. The ONNX and TorchScript
    # exports are written beside them and recorded (with hashes) in the spec, not declared here:
    # a rank without a candidate has none, and an empty file would not be a model.
    output:
        metrics="results/finetune/{budget}/rank{rank}_{protocol}.metrics.json",
        spec="results/finetune/{budget}/rank{rank}_{protocol}.json",
        weights="results/finetune/{budget}/rank{rank}_{protocol}.safetensors",
        card="results/finetune/{budget}/rank{rank}_{protocol}.card.md",
    log:
        "results/logs/finetune/{budget}/rank{rank}_{protocol}.log",
    benchmark:
        "results/benchmarks/finetune/{budget}/rank{rank}_{protocol}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg() | adapter_training_cfg(),
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
        seed=config["seed"],
    script:
        "../scripts/finetune_assembly.py"


rule finetune_zoo:
    input:
        ckpt="results/zoo/{model}.safetensors",
        splits="results/data/splits.json",
        code=code("stages/finetune", "training", "distributed"),
    output:
        metrics="results/finetune/zoo/{model}_FT.metrics.json",
    log:
        "results/logs/finetune/zoo/{model}_FT.log",
    benchmark:
        "results/benchmarks/finetune/zoo/{model}_FT.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg(),
        seed=config["seed"],
    script:
        "../scripts/finetune_zoo.py"


rule finetune_scratch:
    input:
        ranking="results/proxy/{budget}/ranking.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("stages/finetune", "training", "distributed", "stitching"),
    output:
        metrics="results/finetune/{budget}/scratch_FT.metrics.json",
    log:
        "results/logs/finetune/{budget}/scratch_FT.log",
    benchmark:
        "results/benchmarks/finetune/{budget}/scratch_FT.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg(),
        zoo=ZOO,
        stem=config["reassembly"]["stem"],
        seed=config["seed"],
    script:
        "../scripts/finetune_scratch.py"
