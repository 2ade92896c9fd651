from dery.stages import logged
from dery.stages.zoo import pretrain

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    pretrain(p.spec, snakemake.input.splits, p.train, p.seed, snakemake.output.ckpt, snakemake.output.metrics)
