"""Fashion-MNIST CNN pipeline: DVC stages, MLflow tracking and registry, Prefect flows."""

__version__ = "0.1.0"
