from dery.stages import logged
from dery.stages.summary import track

with logged(snakemake.log[0]):
    p = snakemake.params
    track(list(snakemake.input.metrics), p.uri, p.experiment, p.params_hash, snakemake.output[0], p.attempts,
          p.retry_wait_s, snakemake.input.fingerprint, benchmarks=list(snakemake.input.benchmarks),
          splits_json=snakemake.input.splits, test_images=p.test_images, probe_images=p.probe_images)
