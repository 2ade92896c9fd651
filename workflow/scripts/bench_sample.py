from dery.stages import logged
from dery.stages.bench import sample_and_score

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    sample_and_score(snakemake.input.candidates, snakemake.input.splits, "results/zoo", "results/features", p.proxy,
                     p.bench, p.stem, p.init, p.seed, snakemake.output[0])
