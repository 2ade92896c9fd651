from dery.stages import logged
from dery.stages.finetune import finetune_candidate

with logged(snakemake.log[0], snakemake.threads):
    p, w = snakemake.params, snakemake.wildcards
    finetune_candidate(snakemake.input.ranking, int(w.rank), w.protocol, snakemake.input.splits, "results/zoo",
                       "results/features", p.cfg, p.stem, p.init, p.seed, snakemake.output.metrics,
                       snakemake.output.spec)
