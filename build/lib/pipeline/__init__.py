"""Fashion-MNIST CNN pipeline: DVC stages, MLflow tracking and registry, Prefect flows."""
