from dery.stages import logged
from dery.stages.reassembly import block_costs

with logged(snakemake.log[0]):
    block_costs(snakemake.input.sets, "results/zoo", "results/features", snakemake.params.stem, snakemake.output[0])
