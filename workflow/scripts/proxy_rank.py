from dery.stages import logged
from dery.stages.proxy import proxy_rank

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    proxy_rank(snakemake.input.candidates, snakemake.input.splits, "results/zoo", "results/features", p.cfg, p.stem,
               p.init, p.seed, snakemake.output.ranking, snakemake.output.metrics)
