# The claims target: `snakemake --cores all claims` writes results/claims.md (claims (a)-(e) of
# issue 7) from the cached pipeline results plus extra fine-tuning jobs. It never recomputes
# features, similarity or the main partition. Analysis: dery/claims.py; entry points:
# dery/stages/claims.py; helpers: claims_common.smk. Params: the `claims` section of the schema.


include: "claims_common.smk"


rule claims_finetune:
    input:
        ranking=claims_ranking,
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code(
            "stages/claims",
            "stages/finetune",
            "training",
            "distributed",
            "stitching",
            "stitch_training",
        ),
    output:
        metrics="results/claims/finetune/{arm}/{budget}/slot{slot}_{protocol}_seed{seed}.metrics.json",
        spec="results/claims/finetune/{arm}/{budget}/slot{slot}_{protocol}_seed{seed}.json",
    log:
        "results/logs/claims/finetune/{arm}/{budget}/slot{slot}_{protocol}_seed{seed}.log",
    benchmark:
        "results/benchmarks/claims/finetune/{arm}/{budget}/slot{slot}_{protocol}_seed{seed}.tsv"
    wildcard_constraints:
        arm="tau|cuts[0-9]+|randcover[0-9]+|randcuts[0-9]+",
        slot="[0-9]+",
        seed="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg() | adapter_training_cfg(),  # helper: finetune.smk
        n_slots=CLAIMS["assemblies_per_budget"],
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
    script:
        "../scripts/claims_finetune.py"


rule claims_scratch:
    input:
        ranking="results/proxy/{budget}/ranking.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code(
            "stages/claims", "stages/finetune", "training", "distributed", "stitching"
        ),
    output:
        metrics="results/claims/finetune/scratch/{budget}/seed{seed}.metrics.json",
    log:
        "results/logs/claims/finetune/scratch/{budget}/seed{seed}.log",
    benchmark:
        "results/benchmarks/claims/finetune/scratch/{budget}/seed{seed}.tsv"
    wildcard_constraints:
        seed="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg(),
        zoo=ZOO,
        stem=config["reassembly"]["stem"],
    script:
        "../scripts/claims_scratch.py"


rule claims_zoo:
    input:
        ckpt="results/zoo/{model}.safetensors",
        splits="results/data/splits.json",
        code=code("stages/claims", "stages/finetune", "training", "distributed"),
    output:
        metrics="results/claims/finetune/zoo/{model}_seed{seed}.metrics.json",
    log:
        "results/logs/claims/finetune/zoo/{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/claims/finetune/zoo/{model}_seed{seed}.tsv"
    wildcard_constraints:
        seed="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=finetune_cfg(),
    script:
        "../scripts/claims_zoo.py"


rule claims_random_partition:
    input:
        sims=expand("results/similarity/{pair}.npz", pair=PAIRS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("stages/claims", "claims", "partition", "random_starts"),
    output:
        "results/claims/random/cuts{draw}/equivalence_sets.json",
    log:
        "results/logs/claims/random/cuts{draw}/partition.log",
    benchmark:
        "results/benchmarks/claims/random/cuts{draw}/partition.tsv"
    wildcard_constraints:
        draw="[0-9]+",
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg={"K": config["partition"]["K"]},  # uniform random cuts: no size bound, so no eps
        seed=SEED0,
    script:
        "../scripts/claims_random_partition.py"


rule claims_random_costs:
    input:
        sets="results/claims/random/cuts{draw}/equivalence_sets.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("stages/reassembly", "reassembly", "stitching"),
    output:
        "results/claims/random/cuts{draw}/block_costs.json",
    log:
        "results/logs/claims/random/cuts{draw}/block_costs.log",
    benchmark:
        "results/benchmarks/claims/random/cuts{draw}/block_costs.tsv"
    wildcard_constraints:
        draw="[0-9]+",
    conda:
        CONDA_ENV
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        stem=config["reassembly"]["stem"],
    script:
        "../scripts/block_costs.py"


rule claims_random_cut_ranking:
    input:
        costs="results/claims/random/cuts{draw}/block_costs.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code(
            "stages/claims",
            "stages/proxy",
            "stages/reassembly",
            "reassembly",
            "proxy",
            "stitching",
        ),
    output:
        candidates="results/claims/random/cuts{draw}/{budget}/candidates.json",
        ranking="results/claims/random/cuts{draw}/{budget}/ranking.json",
    log:
        "results/logs/claims/random/cuts{draw}/{budget}/ranking.log",
    benchmark:
        "results/benchmarks/claims/random/cuts{draw}/{budget}/ranking.tsv"
    wildcard_constraints:
        draw="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        budget=lambda w: BUDGETS[w.budget],
        # the arm compares reassemblies: a zoo model re-headed is never its pick, whatever reassembly.single_model says
        reassembly={
            **{
                k: config["reassembly"][k]
                for k in ("max_candidates", "forbid", "search")
            },
            "single_model": "drop",
        },
        proxy={**config["proxy"], "report_all": False},  # ranking needs only the chosen proxy
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
        seed=SEED0,
    script:
        "../scripts/claims_random_cut_ranking.py"


rule claims_random_assembly:
    input:
        costs=claims_costs,
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code(
            "stages/claims",
            "claims",
            "stages/proxy",
            "reassembly",
            "proxy",
            "stitching",
        ),
    output:
        "results/claims/random/{space}{draw}/{budget}/random_assembly.json",
    log:
        "results/logs/claims/random/{space}{draw}/{budget}/random_assembly.log",
    benchmark:
        "results/benchmarks/claims/random/{space}{draw}/{budget}/random_assembly.tsv"
    wildcard_constraints:
        space="cover|cuts",
        draw="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        budget=lambda w: BUDGETS[w.budget],
        forbid=config["reassembly"]["forbid"],
        proxy={**config["proxy"], "report_all": False},  # ranking needs only the chosen proxy
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
        seed=SEED0,
    script:
        "../scripts/claims_random_assembly.py"


rule claims:
    input:
        runs=claims_inputs(),
        sims=expand("results/similarity/{pair}.npz", pair=PAIRS),
        metas=expand("results/features/{model}.json", model=MODELS),
        sets="results/partition/equivalence_sets.json",
        rankings=expand("results/proxy/{budget}/ranking.json", budget=BUDGETS),
        ingested=INGESTED,
        code=code("stages/claims_summary", "stages/claims_report", "claims", "tracking"),
    output:
        md="results/claims.md",
        json="results/claims/claims.json",
        metrics="results/claims.metrics.json",
        heatmaps="results/claims/cka_heatmaps.png",
        scatter="results/claims/proxy_vs_accuracy.png",
    log:
        "results/logs/claims/summary.log",
    benchmark:
        "results/benchmarks/claims/summary.tsv"
    conda:
        CONDA_ENV
    params:
        manifest=claims_manifest(),
        cfg={
            "name": config["name"],
            "seed": SEED0,
            "claims": CLAIMS,
            "proxy": config["proxy"],
            "partition": config["partition"],
            "budgets": config["reassembly"]["budgets"],
        },
        uri=tracking_uri(),
        experiment=config["name"],
        params_hash=params_hash(),
    script:
        "../scripts/claims_summary.py"
