rule partition:
    input:
        sims=expand("results/similarity/{pair}.npz", pair=PAIRS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("stages/partition", "partition", "random_starts"),
    output:
        sets="results/partition/equivalence_sets.json",
        metrics="results/partition/equivalence_sets.metrics.json",
    log:
        "results/logs/partition.log",
    benchmark:
        "results/benchmarks/partition.tsv"
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=config["partition"],
        seed=config["seed"],
    script:
        "../scripts/partition.py"


rule block_costs:
    input:
        sets="results/partition/equivalence_sets.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("stages/reassembly", "reassembly", "stitching"),
    output:
        "results/partition/block_costs.json",
    log:
        "results/logs/block_costs.log",
    benchmark:
        "results/benchmarks/block_costs.tsv"
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        stem=config["reassembly"]["stem"],
    script:
        "../scripts/block_costs.py"
