# MLflow is written by one serial job only (track): parallel jobs write *.metrics.json files, so
# SQLite is never written concurrently. summarise reads the tables back from MLflow; the same
# tables print with `dery results`.
rule fingerprint:
    input:
        unpack(lambda w: FINGERPRINT_FILES),
        code=code("stages/summary", "fingerprint", "repro"),
    output:
        "results/fingerprint.json",
    log:
        "results/logs/fingerprint.log",
    benchmark:
        "results/benchmarks/fingerprint.tsv"
    conda:
        CONDA_ENV
    params:
        files=FINGERPRINT_FILES,
    script:
        "../scripts/fingerprint.py"


rule track:
    input:
        metrics=metric_files(),
        # each record's job: its duration and peak memory (the runs' times and job.* metrics)
        benchmarks=tracking.benchmark_files(metric_files()),
        splits="results/data/splits.json",  # the datasets each run logs
        fingerprint="results/fingerprint.json",
        code=code("stages/summary", "tracking"),
    output:
        INGESTED,
    log:
        "results/logs/track.log",
    benchmark:
        "results/benchmarks/track.tsv"
    conda:
        CONDA_ENV
    params:
        uri=tracking_uri(),
        experiment=config["name"],
        params_hash=params_hash(),
        attempts=config["tracking"]["attempts"],
        retry_wait_s=config["tracking"]["retry_wait_s"],
        test_images=config["finetune"]["test_images"],
        probe_images=config["features"]["probe_images"],
    script:
        "../scripts/track.py"


rule summarise:
    input:
        ingested=INGESTED,
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
    log:
        "results/logs/summarise.log",
    benchmark:
        "results/benchmarks/summarise.tsv"
    conda:
        CONDA_ENV
    params:
        uri=tracking_uri(),
        experiment=config["name"],
    script:
        "../scripts/summarise.py"
