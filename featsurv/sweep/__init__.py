"""Sweeps: many models x SAE sets x configurations from one TOML file (docs/sweeps.md).

spec.py reads and validates the file, jobs.py turns it into jobs (one FP pass each), store.py
keeps the sweep directory (pieces, manifests, sweep.parquet), runner.py runs one job,
executors.py runs the jobs in-process or on Ray, report.py draws the figures.
"""
