from dery.stages import logged
from dery.stages.bench import finetune_slot

with logged(snakemake.log[0], snakemake.threads):
    p, w = snakemake.params, snakemake.wildcards
    finetune_slot(snakemake.input.sample, int(w.slot), w.protocol, int(w.seed), w.stitch, snakemake.input.splits,
                  "results/zoo", "results/features", p.cfg, p.stem, p.stitching, snakemake.output.metrics,
                  snakemake.output.spec)
