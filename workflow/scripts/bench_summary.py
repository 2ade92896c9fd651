from dery.stages import logged
from dery.stages.bench import summarise

with logged(snakemake.log[0]):
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    summarise(p.manifest, p.samples, p.budgets, p.cfg, i.fingerprint, p.uri, p.experiment, o.csv, o.json, o.md,
              o.metrics, o.figures)
