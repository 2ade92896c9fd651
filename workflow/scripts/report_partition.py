from dery.report import partition_figure_file
from dery.stages import logged

with logged(snakemake.log[0]):
    partition_figure_file(snakemake.input.sets, list(snakemake.input.metas), snakemake.output[0])
