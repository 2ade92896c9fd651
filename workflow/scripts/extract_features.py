from dery.stages import logged
from dery.stages.features import extract_features

with logged(snakemake.log[0], snakemake.threads):
    p = snakemake.params
    extract_features(snakemake.input.ckpt, snakemake.input.splits, p.probe_images, p.batch_size,
                     snakemake.output.npz, snakemake.output.meta)
