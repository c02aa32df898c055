"""MLflow, split by job (store, runs and their lineage, the served model, the Model Registry): the only package that imports mlflow."""
