# Reassembly-Bench: `snakemake --cores all bench` fine-tunes every feasible candidate of each budget (or a
# params-stratified sample), scores each with every proxy, and writes the dataset results/bench.csv with its
# scoring results/bench.md. It reuses the cached pipeline up to the ILP's candidates: it reads no ranking, so choosing
# another `proxy.name` from its verdict re-runs none of its fine-tuning jobs. Analysis: dery/bench.py;
# entry points: dery/stages/bench.py; params: the `bench` section of the schema.
include: "bench_common.smk"


checkpoint bench_sample:
    input:
        candidates="results/reassembly/{budget}/candidates.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code("stages/bench", "bench", "stages/proxy", "proxy", "stitching"),
    output:
        "results/bench/{budget}/sample.json",
    log:
        "results/logs/bench/{budget}/sample.log",
    benchmark:
        "results/benchmarks/bench/{budget}/sample.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        proxy={k: v for k, v in config["proxy"].items() if k != "name"},  # every proxy scores
        bench={k: BENCH[k] for k in ("max_assemblies", "low_fidelity")},
        stem=config["reassembly"]["stem"],
        init=config["stitching"]["init"],
        seed=SEED0,
    script:
        "../scripts/bench_sample.py"


rule bench_finetune:
    input:
        sample="results/bench/{budget}/sample.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        feats=expand("results/features/{model}.npz", model=MODELS),
        code=code(
            "stages/bench",
            "stages/finetune",
            "training",
            "distributed",
            "stitching",
            "stitch_training",
        ),
    output:
        metrics="results/bench/finetune/{budget}/slot{slot}_{protocol}_{stitch}_seed{seed}.metrics.json",
        spec="results/bench/finetune/{budget}/slot{slot}_{protocol}_{stitch}_seed{seed}.json",
    log:
        "results/logs/bench/finetune/{budget}/slot{slot}_{protocol}_{stitch}_seed{seed}.log",
    benchmark:
        "results/benchmarks/bench/finetune/{budget}/slot{slot}_{protocol}_{stitch}_seed{seed}.tsv"
    wildcard_constraints:
        slot="[0-9]+",
        seed="[0-9]+",
        stitch="lstsq|random|trained",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=BENCH_FT,
        stem=config["reassembly"]["stem"],
        stitching=BENCH_STITCH,
    script:
        "../scripts/bench_finetune.py"


rule bench_scratch:
    input:
        sample="results/bench/{budget}/sample.json",
        splits="results/data/splits.json",
        ckpts=expand("results/zoo/{model}.safetensors", model=MODELS),
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code(
            "stages/bench", "stages/finetune", "training", "distributed", "stitching"
        ),
    output:
        metrics="results/bench/finetune/{budget}/scratch_slot{slot}_seed{seed}.metrics.json",
    log:
        "results/logs/bench/finetune/{budget}/scratch_slot{slot}_seed{seed}.log",
    benchmark:
        "results/benchmarks/bench/finetune/{budget}/scratch_slot{slot}_seed{seed}.tsv"
    wildcard_constraints:
        slot="[0-9]+",
        seed="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=BENCH_FT,
        zoo=ZOO,
        stem=config["reassembly"]["stem"],
    script:
        "../scripts/bench_scratch.py"


rule bench_zoo:
    input:
        ckpt="results/zoo/{model}.safetensors",
        splits="results/data/splits.json",
        code=code("stages/bench", "stages/finetune", "training", "distributed"),
    output:
        metrics="results/bench/finetune/zoo/{model}_seed{seed}.metrics.json",
    log:
        "results/logs/bench/finetune/zoo/{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/bench/finetune/zoo/{model}_seed{seed}.tsv"
    wildcard_constraints:
        seed="[0-9]+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=3000,
    params:
        repro=REPRO,  # the kernels a job may use change its numbers
        cfg=BENCH_FT,
    script:
        "../scripts/bench_zoo.py"


rule bench:
    input:
        unpack(bench_inputs),
        fingerprint="results/fingerprint.json",
        ingested=INGESTED,  # the bench's run joins the experiment the main run created
        code=code("stages/bench", "stages/bench_report", "bench", "claims", "tracking"),
    output:
        csv="results/bench.csv",
        md="results/bench.md",
        metrics="results/bench.metrics.json",
        json="results/bench/bench.json",
        figures=directory("results/bench/figures"),
    log:
        "results/logs/bench/summary.log",
    benchmark:
        "results/benchmarks/bench/summary.tsv"
    conda:
        CONDA_ENV
    params:
        manifest=bench_manifest,
        samples=lambda w: {b: bench_sample_file(b) for b in BUDGETS},
        budgets=config["reassembly"]["budgets"],
        cfg={
            "name": config["name"],
            "seed": SEED0,
            "bench": BENCH,
            "proxy": config["proxy"],
        },
        uri=tracking_uri(),
        experiment=config["name"],
    script:
        "../scripts/bench_summary.py"
