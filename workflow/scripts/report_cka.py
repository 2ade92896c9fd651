from dery.report import cka_heatmap_file
from dery.stages import logged

with logged(snakemake.log[0]):
    w = snakemake.wildcards
    cka_heatmap_file(snakemake.input.npz, snakemake.input.sets, w.a, w.b, snakemake.output[0])
