"""The served model: a pyfunc wrapper around the Keras file, and how it is logged to a run.

``FashionClassifier`` is what ``mlflow models serve`` and ``models:/...`` loads run: it checks the
Keras file's SHA-256 before loading it, validates every request with
:func:`pipeline.core.images.to_model_input` (bad input is an HTTP 400 with a one-line message),
and returns per image the class index, the class name and ten probabilities. It takes tensors
(JSON ``inputs``/``instances``) and flat 784-pixel rows (``dataframe_split``, ``text/csv``) in the
column layout of the CSV edition of Fashion-MNIST.

A version is logged as models-from-code, as MLflow recommends: loading it runs
:mod:`pipeline.adapters.mlflow.model_code` (``MODEL_CODE``) and unpickles nothing. A version logged
before that (a pickled ``FashionClassifier``) still loads, as MLflow loads pickles by default.

The forward pass is :func:`pipeline.core.inference.forward`, the function ``evaluate`` scored the
variant with, with the same test-time augmentation (recorded beside the Keras file at logging time).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.adapters.files import file_sha256
from pipeline.core.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # pipeline/: shipped with the model as its code (``code_paths``)
MODEL_CODE = "pipeline.adapters.mlflow.model_code"  # what loading a version runs; tests/stage_deps.py follows it as an import


class RejectedInput(InputError, MlflowException):
    """Bad model input: an ``InputError`` to the CLI, and an HTTP 400 with this message (no stack trace) from the server."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


class FashionClassifier(mlflow.pyfunc.PythonModel):
    """The served model: for each image, the class index, the class name and ten probabilities.

    Loads the Keras file in safe mode after checking its SHA-256 against the one recorded at
    logging time, and validates every request with :func:`pipeline.core.images.to_model_input`.
    """

    def load_context(self, context):
        import keras

        from pipeline.core.inference import forward

        path = Path(context.artifacts["keras_model"])
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        if file_sha256(path) != meta["sha256"]:
            raise RuntimeError(f"{path}: SHA-256 does not match the hash recorded when the model was logged; refusing to load")
        self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        self.class_names = meta["class_names"]
        self.tta = meta.get("tta", "none")  # versions logged before the setting existed predicted without
        self.probabilities = forward(self.model, self.tta)  # (N, 28, 28, 1) float32 -> (N, 10) float32

    def classify(self, images: object) -> dict:
        """The answer for a batch of images, as columns: ``class_index`` (N,) int64, ``class_name`` (N names) and
        ``probabilities`` (N, 10) float64 rounded to 6 decimals. The server encodes these; :meth:`predict` frames them.

        Raises:
            RejectedInput: the images are not a batch this model takes, with what was found.
        """
        from pipeline.core.images import to_model_input

        try:
            x = to_model_input(images)
        except InputError as exc:
            raise RejectedInput(str(exc)) from None
        proba = self.probabilities(x)
        index = proba.argmax(axis=1).astype(np.int64)
        return {
            "class_index": index,
            "class_name": [self.class_names[i] for i in index],
            "probabilities": np.round(proba.astype(np.float64), 6),
        }

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        # np.ndarray: a hint MLflow infers no schema from, so its validation stays out of the way and
        # to_model_input checks every layout this model accepts (it also takes lists and DataFrames).
        from pipeline.core.images import rows_to_images

        if isinstance(model_input, pd.DataFrame):  # dataframe_split or CSV: flat pixel rows
            try:
                model_input = rows_to_images(list(model_input.columns), model_input.to_numpy())
            except InputError as exc:
                raise RejectedInput(str(exc)) from None
        out = self.classify(model_input)
        return pd.DataFrame({**out, "probabilities": out["probabilities"].tolist()})


def _requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"mlflow=={mlflow.__version__}",
        "numpy",
        "pandas",
        "pillow",
    ]


def log_model(model_path: Path, class_names: tuple[str, ...], tta: str) -> str:
    """Log the variant's model to the active run: the Keras flavour and the serving wrapper.

    Returns:
        The URI of the serving model (``models:/<model id>``), which ``register`` registers.
    """
    import keras
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    sha = file_sha256(model_path)
    tmp = Path(tempfile.mkdtemp(prefix="fmnist-serving-"))  # not beside the model: models/ holds train's outputs only
    meta = tmp / "serving.json"
    meta.write_text(json.dumps({"sha256": sha, "class_names": list(class_names), "tta": tta}))
    reqs = _requirements()
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    keras_sig = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, 28, 28, 1))]), Schema([TensorSpec(np.dtype("float32"), (-1, 10))])
    )
    mlflow.keras.log_model(model, name="keras_model", signature=keras_sig, pip_requirements=reqs)
    # Outputs only: with no input schema MLflow hands every request to FashionClassifier.predict as
    # parsed (JSON tensors as a numpy array, dataframe_split and CSV as a DataFrame), and predict
    # checks each layout itself. A tensor input schema would make MLflow refuse pixel rows (784
    # DataFrame columns) before predict, and turn every JSON tensor into an array of Python objects.
    serving_sig = ModelSignature(
        outputs=Schema(
            [
                ColSpec(DataType.long, "class_index"),
                ColSpec(DataType.string, "class_name"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]
        )
    )
    try:
        with warnings.catch_warnings():
            # MLflow asks for an input example; this model takes several layouts (its signature says
            # "any array") and predict checks each request itself, so there is no one example to give.
            warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PACKAGE_DIR.parent.joinpath(*MODEL_CODE.split(".")).with_suffix(".py")),
                artifacts={"keras_model": str(model_path), "meta": str(meta)},
                code_paths=[str(PACKAGE_DIR)],
                signature=serving_sig,
                pip_requirements=reqs,
                tags={"model_sha256": sha, "tta": tta},
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mlflow.set_tag("model_sha256", sha)
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri
