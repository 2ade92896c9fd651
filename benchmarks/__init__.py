"""Benchmarks for dery: `python benchmarks/run.py` prints one table row per pipeline stage."""
