from dery.stages import logged
from dery.stages.data import split_data

with logged(snakemake.log[0]):
    p = snakemake.params
    split_data(snakemake.output[0], p.data, p.sources, p.per_source, p.val_fraction, p.target, p.seed)
