rule extract_features:
    input:
        ckpt="results/zoo/{model}.safetensors",
        meta="results/zoo/{model}.json",
        splits="results/data/splits.json",
        code=code("stages/features", "features"),
    output:
        npz="results/features/{model}.npz",
        meta="results/features/{model}.json",
    log:
        "results/logs/extract_features/{model}.log",
    benchmark:
        "results/benchmarks/extract_features/{model}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        probe_images=config["features"]["probe_images"],
        batch_size=config["features"]["batch_size"],
    script:
        "../scripts/extract_features.py"


rule similarity:
    input:
        a="results/features/{a}.npz",
        b="results/features/{b}.npz",
        a_meta="results/features/{a}.json",
        b_meta="results/features/{b}.json",
        code=code("stages/similarity", "similarity"),
    output:
        "results/similarity/{a}.vs.{b}.npz",
    log:
        "results/logs/similarity/{a}.vs.{b}.log",
    benchmark:
        "results/benchmarks/similarity/{a}.vs.{b}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
    script:
        "../scripts/similarity.py"
