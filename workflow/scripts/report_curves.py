from dery.report import training_curves_files
from dery.stages import logged

with logged(snakemake.log[0]):
    training_curves_files(list(snakemake.input.metrics), snakemake.output[0])
