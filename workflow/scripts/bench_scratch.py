from dery.stages import logged
from dery.stages.bench import scratch_slot

with logged(snakemake.log[0], snakemake.threads):
    p, w = snakemake.params, snakemake.wildcards
    scratch_slot(snakemake.input.sample, int(w.slot), snakemake.input.splits, "results/zoo", "results/features", p.zoo,
                 p.cfg, p.stem, int(w.seed), snakemake.output.metrics)
