rule reassembly_ilp:
    input:
        costs="results/partition/block_costs.json",
        code=code("stages/reassembly", "reassembly"),
    output:
        candidates="results/reassembly/{budget}/candidates.json",
        metrics="results/reassembly/{budget}/candidates.metrics.json",
    log:
        "results/logs/reassembly_ilp/{budget}.log",
    benchmark:
        "results/benchmarks/reassembly_ilp/{budget}.tsv"
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        budget=lambda w: BUDGETS[w.budget],
        cfg={
            k: config["reassembly"][k]
            for k in ("max_candidates", "forbid", "search", "single_model")
        },
        seed=config["seed"],
    script:
        "../scripts/reassembly_ilp.py"


rule proxy_rank:
    input:
        candidates="results/reassembly/{budget}/candidates.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code("stages/proxy", "proxy", "stitching"),
    output:
        ranking="results/proxy/{budget}/ranking.json",
        metrics="results/proxy/{budget}/ranking.metrics.json",
    log:
        "results/logs/proxy_rank/{budget}.log",
    benchmark:
        "results/benchmarks/proxy_rank/{budget}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=config["proxy"],
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
        seed=config["seed"],
    script:
        "../scripts/proxy_rank.py"
