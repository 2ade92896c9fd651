from dery.report import table_figures
from dery.stages import logged

with logged(snakemake.log[0]):
    table_figures(snakemake.input.csv, snakemake.output.proxy, snakemake.output.pareto)
