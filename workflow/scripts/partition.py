from dery.stages import logged
from dery.stages.partition import partition

with logged(snakemake.log[0]):
    partition(list(snakemake.input.sims), list(snakemake.input.metas), snakemake.params.cfg, snakemake.params.seed,
              snakemake.output.sets, snakemake.output.metrics)
