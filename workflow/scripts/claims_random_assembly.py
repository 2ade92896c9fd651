from dery.stages import logged
from dery.stages.claims import random_assembly

with logged(snakemake.log[0], snakemake.threads):
    p, w = snakemake.params, snakemake.wildcards
    random_assembly(snakemake.input.costs, snakemake.input.splits, "results/zoo", "results/features", p.budget,
                    p.forbid, p.proxy, p.stem, p.init, p.seed, int(w.draw), f"rand{w.space}", snakemake.output[0])
