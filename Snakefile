# dery: Deep Model Reassembly as a Snakemake workflow. This file only includes the rules;
# helpers and config validation live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


# A params file given with --configfile stands alone: what it leaves out comes from the schema's defaults, never
# from params/default.yaml (Snakemake would deep-merge the two). Without one, the embedded default runs.
if not workflow.overwrite_configfiles:

    configfile: "params/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    a="[A-Za-z0-9_-]+",
    b="[A-Za-z0-9_-]+",
    budget="[A-Za-z0-9_-]+",
    rank="[0-9]+",
    protocol="FZ|FT",


include: "workflow/rules/zoo.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/partition.smk"
include: "workflow/rules/reassembly.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/registry.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        "results/summary.md",
        "results/summary.csv",
        "results/metrics.json",
        "results/registry/models.json",
        # requested, not only an intermediate: when the MLflow store was lost, common.smk removes this marker,
        # and Snakemake remakes a missing intermediate only when something requests it
        INGESTED,
        REPORT_FIGURES,
