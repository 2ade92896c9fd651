from dery.stages import logged
from dery.stages.bench import zoo_seed

with logged(snakemake.log[0], snakemake.threads):
    zoo_seed(snakemake.input.ckpt, snakemake.input.splits, snakemake.params.cfg, int(snakemake.wildcards.seed),
             snakemake.output.metrics)
