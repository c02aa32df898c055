"""Adapters: one module (or package) per outside system: files, paths, locks, DVC, the mirrors, MLflow."""
