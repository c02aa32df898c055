"""The served model's code, as MLflow's models-from-code runs it: loading a version runs this file, no pickle.

:func:`pipeline.adapters.mlflow.serving.log_model` ships it as the version's ``python_model``, with
``pipeline/`` as its ``code_paths``; nothing in the project imports it.
"""

from mlflow.models import set_model

from pipeline.adapters.mlflow.serving import FashionClassifier

set_model(FashionClassifier())
