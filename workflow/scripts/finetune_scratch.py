from dery.stages import logged
from dery.stages.finetune import finetune_scratch

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    finetune_scratch(snakemake.input.ranking, snakemake.input.splits, "results/zoo", "results/features", p.zoo, p.cfg,
                     p.stem, p.seed, snakemake.output.metrics)
