"""The core: parsing, splits, models, the training loop, metrics, figures and decisions, with no client of an outside system.

Nothing here talks to MLflow, DVC, Prefect or a server, nor imports an adapter; functions take
arrays, settings and paths given to them. The training loop writes its own Keras checkpoints.
"""
