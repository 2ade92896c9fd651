from dery.stages import logged
from dery.stages.claims import finetune_slot

with logged(snakemake.log[0], snakemake.threads):
    p, w = snakemake.params, snakemake.wildcards
    finetune_slot(snakemake.input.ranking, w.arm, int(w.slot), p.n_slots, w.protocol, int(w.seed),
                  snakemake.input.splits, "results/zoo", "results/features", p.cfg, p.stem, p.init,
                  snakemake.output.metrics, snakemake.output.spec)
