# Figures for `snakemake --report results/report.html`: made in the normal DAG (rule all asks for
# them), so the report can be built right after a run. Plotting code: dery/report.py.
REPORT_FIGURES = expand("results/report/cka/{pair}.png", pair=PAIRS) + [
    "results/report/partition.png",
    "results/report/proxy_vs_accuracy.png",
    "results/report/accuracy_vs_params.png",
    "results/report/training_curves.png",
]


localrules:
    report_figures,


rule report_figures:
    input:
        REPORT_FIGURES,


rule report_cka:
    input:
        npz="results/similarity/{a}.vs.{b}.npz",
        sets="results/partition/equivalence_sets.json",
        code=code("report"),
    output:
        report(
            "results/report/cka/{a}.vs.{b}.png",
            caption="../report/cka.rst",
            category="1. Block similarity (CKA)",
            labels={"model": "{a}", "versus": "{b}"},
        ),
    log:
        "results/logs/report/cka/{a}.vs.{b}.log",
    benchmark:
        "results/benchmarks/report/cka/{a}.vs.{b}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/report_cka.py"


rule report_partition:
    input:
        sets="results/partition/equivalence_sets.json",
        metas=expand("results/features/{model}.json", model=MODELS),
        code=code("report"),
    output:
        report(
            "results/report/partition.png",
            caption="../report/partition.rst",
            category="2. Partition",
            labels={"figure": "blocks and equivalence sets"},
        ),
    log:
        "results/logs/report/partition.log",
    benchmark:
        "results/benchmarks/report/partition.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/report_partition.py"


rule report_tables:
    input:
        csv="results/summary.csv",
        code=code("report", "evaluation"),
    output:
        proxy=report(
            "results/report/proxy_vs_accuracy.png",
            caption="../report/proxy.rst",
            category="3. Proxy vs accuracy",
            labels={"figure": "NASWOT vs top-1"},
        ),
        pareto=report(
            "results/report/accuracy_vs_params.png",
            caption="../report/pareto.rst",
            category="4. Accuracy vs size",
            labels={"figure": "top-1 vs params"},
        ),
    log:
        "results/logs/report/tables.log",
    benchmark:
        "results/benchmarks/report/tables.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/report_tables.py"


rule report_curves:
    input:
        metrics=metric_files(),
        code=code("report"),
    output:
        report(
            "results/report/training_curves.png",
            caption="../report/curves.rst",
            category="5. Training curves",
            labels={"figure": "per-epoch validation top-1 and loss"},
        ),
    log:
        "results/logs/report/curves.log",
    benchmark:
        "results/benchmarks/report/curves.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/report_curves.py"
