from dery.stages import logged
from dery.stages.summary import summarise

with logged(snakemake.log[0]):
    o = snakemake.output
    summarise(snakemake.params.uri, snakemake.params.experiment, o.md, o.csv, o.metrics)
