"""Benchmarks for cachesvc: `python -m benchmarks.run --smoke|--full [--only NAME]` (see benchmarks/README.md)."""
