"""dery: Deep Model Reassembly (Yang et al., NeurIPS 2022), reproducible.

One module per stage of the method; none of them imports Snakemake:

- ``data``        Fashion-MNIST (the embedded default) and the splits every stage shares
- ``zoo``         build, pretrain-save and load zoo models (timm, safetensors)
- ``features``    dissect a timm model into block-level nodes, extract pooled node features
- ``similarity``  linear CKA between every node of two models, vectorised
- ``partition``   cover-set partition into K blocks per model and K equivalence sets
- ``reassembly``  block costs (params, MACs) and the 0-1 program on SCIP
- ``stitching``   adapters, stems, heads: turn an assembly spec into an ``nn.Module``
- ``proxy``       training-free scores (NASWOT)
- ``training``    pretraining and fine-tuning (FZ / FT)
- ``evaluation``  accuracy, rank correlation, the summary table
- ``tracking``    MLflow ingestion and read-back
"""

__version__ = "0.1.0"
