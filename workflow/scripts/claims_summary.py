from pathlib import Path

from dery.stages import logged
from dery.stages.claims_summary import summarise_claims

with logged(snakemake.log[0]):
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    summarise_claims(p.manifest, list(i.sims), list(i.metas), i.sets, list(i.rankings), p.cfg, p.uri, p.experiment,
                     p.params_hash, o.md, o.json, o.metrics, str(Path(o.heatmaps).parent))
