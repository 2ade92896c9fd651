"""Stage entry points, one module per Snakemake rule group.

Each function reads the files in ``results/`` its stage needs, calls the library's stage
functions, writes its outputs atomically and a ``*.metrics.json`` record for MLflow. Nothing
here knows about Snakemake: every stage also runs from plain Python with paths and dicts.
Rules list the entry module and the library module they run as inputs, so editing one stage
re-runs that stage and what follows it, not the whole DAG.
"""
from ._io import logged

__all__ = ["logged"]
