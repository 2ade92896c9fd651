from dery.stages import logged
from dery.stages.summary import write_fingerprint

with logged(snakemake.log[0]):
    write_fingerprint({k: list(v) for k, v in snakemake.params.files.items()}, snakemake.output[0])
