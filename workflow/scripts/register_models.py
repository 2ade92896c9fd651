from dery.stages import logged
from dery.stages.registry import register_models

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    register_models(list(snakemake.input.specs), p.uri, p.experiment, snakemake.output[0])
