from dery.stages import logged
from dery.stages.reassembly import reassemble

with logged(snakemake.log[0]):
    p = snakemake.params
    reassemble(snakemake.input.costs, p.budget, p.cfg, p.seed, snakemake.output.candidates, snakemake.output.metrics)
