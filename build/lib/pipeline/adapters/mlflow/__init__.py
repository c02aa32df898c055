"""MLflow, split by job: the store (``store``), runs and their lineage (``runs``, ``lineage``, ``orphans``,
``epochs``), the served model (``serving``) and the Model Registry (``registry``).

These modules are the only ones in the project that import mlflow.
"""
