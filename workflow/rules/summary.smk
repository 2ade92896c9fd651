# MLflow is written by one serial job only (track): parallel jobs write *.metrics.json files, so
# SQLite is never written concurrently. summarise reads the tables back from MLflow; the same
# tables print with `dery results`.
rule fingerprint:
    input:
        unpack(lambda w: FINGERPRINT_FILES),
        code=code("stages/summary", "fingerprint", "repro"),
    output:
        "results/fingerprint.json",
    params:
        files=FINGERPRINT_FILES,
    log:
        "results/logs/fingerprint.log",
    benchmark:
        "results/benchmarks/fingerprint.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/fingerprint.py"


rule track:
    input:
        metrics=metric_files(),
        fingerprint="results/fingerprint.json",
        code=code("stages/summary", "tracking"),
    output:
        "results/mlflow/ingested.json",
    params:
        uri=tracking_uri(),
        experiment=config["name"],
        params_hash=params_hash(),
        attempts=config["tracking"]["attempts"],
        retry_wait_s=config["tracking"]["retry_wait_s"],
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
        code=code("stages/summary", "evaluation", "tracking", "fingerprint"),
    output:
        md="results/summary.md",
        csv=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="6. Result table",
            labels={"table": "every fine-tuned network"},
        ),
        metrics="results/metrics.json",
    params:
        uri=tracking_uri(),
        experiment=config["name"],
    log:
        "results/logs/summarise.log",
    benchmark:
        "results/benchmarks/summarise.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/summarise.py"
