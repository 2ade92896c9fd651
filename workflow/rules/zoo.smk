rule split_data:
    input:
        code=code("stages/data", "data"),
    output:
        "results/data/splits.json",
    log:
        "results/logs/split_data.log",
    benchmark:
        "results/benchmarks/split_data.tsv"
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        data=config["data"],
        sources=config["sources"],
        per_source=config["zoo_training"]["images_per_source"],
        val_fraction=config["zoo_training"]["val_fraction"],
        target=config["target"],
        seed=config["seed"],
    script:
        "../scripts/split_data.py"


rule pretrain_zoo:
    input:
        splits="results/data/splits.json",
        code=code("stages/zoo", "zoo", "training"),
    output:
        ckpt="results/zoo/{model}.safetensors",
        meta="results/zoo/{model}.json",
        metrics="results/zoo/{model}.metrics.json",
    log:
        "results/logs/pretrain_zoo/{model}.log",
    benchmark:
        "results/benchmarks/pretrain_zoo/{model}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        spec=lambda w: ZOO[w.model],
        train=config["zoo_training"],
        seed=config["seed"],
    script:
        "../scripts/pretrain_zoo.py"
