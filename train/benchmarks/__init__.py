"""Benchmarks: run as `python -m train.benchmarks.NAME`; each prints what it measured and how."""
