# Every fine-tuned assembly as an MLflow model, registered as dery-{name}-{budget} (alias `best`:
# highest validation accuracy; `rank<r>-<FZ|FT>`: each candidate). One serial job after track,
# so no two jobs ever write the SQLite store at once; re-running registers only changed artifacts.
ARTIFACT_FILES = dict(
    specs=expand(
        "results/finetune/{budget}/rank{rank}_{protocol}.json",
        budget=BUDGETS,
        rank=RANKS,
        protocol=PROTOCOLS,
    ),
    weights=expand(
        "results/finetune/{budget}/rank{rank}_{protocol}.safetensors",
        budget=BUDGETS,
        rank=RANKS,
        protocol=PROTOCOLS,
    ),
    cards=expand(
        "results/finetune/{budget}/rank{rank}_{protocol}.card.md",
        budget=BUDGETS,
        rank=RANKS,
        protocol=PROTOCOLS,
    ),
)


rule register_models:
    input:
        **ARTIFACT_FILES,
        ingested=INGESTED,
        code=code("stages/registry", "artifacts", "model_card"),
    output:
        "results/registry/models.json",
    log:
        "results/logs/register_models.log",
    benchmark:
        "results/benchmarks/register_models.tsv"
    conda:
        CONDA_ENV
    params:
        uri=tracking_uri(),
        experiment=config["name"],
    script:
        "../scripts/register_models.py"
