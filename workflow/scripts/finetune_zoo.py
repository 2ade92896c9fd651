from dery.stages import logged
from dery.stages.finetune import finetune_zoo

with logged(snakemake.log[0], snakemake.threads):
    finetune_zoo(snakemake.input.ckpt, snakemake.input.splits, snakemake.params.cfg, snakemake.params.seed,
                 snakemake.output.metrics)
