from dery.stages import logged
from dery.stages.similarity import similarity

with logged(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    similarity(i.a, i.b, i.a_meta, i.b_meta, snakemake.output[0])
