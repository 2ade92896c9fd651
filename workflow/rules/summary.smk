rule track:
    input:
        metrics=metric_files(),
        code=code("stages/summary", "tracking"),
    output:
        "results/mlflow/ingested.json",
    params:
        uri=tracking_uri(),
        experiment=config["name"],
        params_hash=params_hash(),
    log:
        "results/logs/track.log",
    benchmark:
        "results/benchmarks/track.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/track.py"


rule summarise:
    input:
        ingested="results/mlflow/ingested.json",
        sets="results/partition/equivalence_sets.json",
        code=code("stages/summary", "evaluation", "tracking"),
    output:
        md="results/summary.md",
        csv="results/summary.csv",
        metrics="results/metrics.json",
    log:
        "results/logs/summarise.log",
    benchmark:
        "results/benchmarks/summarise.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/summarise.py"
