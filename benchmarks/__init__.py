"""Benchmarks of gad_trl: `python -m benchmarks.quality` and `python -m benchmarks.cost` (see README.md)."""
