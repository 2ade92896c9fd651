from dery.stages import logged
from dery.stages.claims import random_cut_ranking

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    random_cut_ranking(snakemake.input.costs, snakemake.input.splits, "results/zoo", "results/features", p.budget,
                       p.reassembly, p.proxy, p.stem, p.init, p.seed, snakemake.output.candidates,
                       snakemake.output.ranking)
