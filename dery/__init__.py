"""dery: Deep Model Reassembly (Yang et al., NeurIPS 2022), reproducible.

One module per stage of the method; none of them imports Snakemake:

- ``data``        Fashion-MNIST (the embedded default) and the splits every stage shares
- ``zoo``         build, pretrain-save and load zoo models (timm, safetensors)
- ``features``    dissect a timm model into block-level nodes, extract pooled node features
- ``similarity``  linear CKA between every node of two models, vectorised
- ``partition``   cover-set partition into K blocks per model and K equivalence sets (``random_starts``: its
                  seeded starts)
- ``reassembly``  block costs (params, MACs) and the 0-1 program on SCIP
- ``stitching``   adapters, stems, heads: turn an assembly spec into an ``nn.Module``
- ``proxy``       training-free scores (NASWOT)
- ``training``    pretraining and fine-tuning (FZ / FT)
- ``evaluation``  accuracy, rank correlation, the summary table
- ``tracking``    MLflow ingestion and read-back
- ``artifacts``   fine-tuned assemblies as safetensors + versioned spec (``model_card``: its card;
                  ``export``: ONNX and TorchScript, checked against PyTorch)
"""

__version__ = "0.1.0"


def load_assembly(path):
    """A fine-tuned assembly (spec .json, its .safetensors, or a budget folder) as an eval-mode ``nn.Module``.

    See ``dery.artifacts.load_assembly``; imported lazily so ``import dery`` stays light.
    """
    from .artifacts import load_assembly as _load

    return _load(path)


def preprocess(images, spec=None):
    """Raw images (file, PIL image, uint8 pixels) -> the input tensor an assembly takes; see ``dery.artifacts``."""
    from .artifacts import preprocess as _preprocess

    return _preprocess(images, spec)
