"""The pure core: parsing, splits, models, the training loop, metrics, figures and decisions.

Nothing here knows where files live or talks to MLflow, DVC or Prefect; functions take arrays,
settings and figures and return new ones. The only project module it imports is itself.
"""
