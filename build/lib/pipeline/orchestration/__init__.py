"""Prefect orchestration, the only package that imports prefect: flows that run the DVC stages and decide nothing."""
