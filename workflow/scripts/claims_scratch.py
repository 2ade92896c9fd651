from dery.stages import logged
from dery.stages.claims import scratch_seed

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    scratch_seed(snakemake.input.ranking, snakemake.input.splits, "results/zoo", "results/features", p.zoo, p.cfg,
                 p.stem, int(snakemake.wildcards.seed), snakemake.output.metrics)
