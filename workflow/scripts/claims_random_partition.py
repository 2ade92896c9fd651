from dery.stages import logged
from dery.stages.claims import random_partition

with logged(snakemake.log[0]):
    random_partition(list(snakemake.input.sims), list(snakemake.input.metas), snakemake.params.cfg,
                     snakemake.params.seed, int(snakemake.wildcards.draw), snakemake.output[0])
