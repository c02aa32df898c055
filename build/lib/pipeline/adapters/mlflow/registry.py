"""The Model Registry: versions, aliases (``champion``, ``challenger``, ``previous``), tags, and loading a version."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.adapters.files import file_sha256
from pipeline.adapters.mlflow.serving import FashionClassifier
from pipeline.adapters.mlflow.store import client, tracking_uri
from pipeline.core.errors import RegistryError


def register_version(name: str, run_id: str, tags: dict[str, str]) -> str:
    """Register the serving model logged by ``run_id`` as a new version; returns the version number."""
    c = client()
    run = c.get_run(run_id)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise RegistryError(f"run {run_id} has no logged model (tag model_uri); was its evaluation completed?")
    try:
        c.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # exists already
    mv = c.create_model_version(
        name, model_uri, run_id=run_id, tags=tags | {"model_sha256": run.data.tags.get("model_sha256", "")}
    )
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def load_version(name: str, version: str):
    """Load a registered version as a pyfunc, after checking its Keras file against the version's ``model_sha256`` tag.

    The check runs before anything is deserialized; a version without the tag is refused too.
    """
    mlflow.set_tracking_uri(tracking_uri())
    try:
        expected = version_tags(name, version).get("model_sha256")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    except MlflowException as exc:
        raise RegistryError(
            f"{name} version {version}: cannot be read from the registry at {tracking_uri()} ({exc.message})"
        ) from None
    if not expected:
        raise RegistryError(f"{name} version {version}: no model_sha256 tag to check its model file against; refusing to load it")
    keras_file = local / mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]["keras_model"]["path"]
    if file_sha256(keras_file) != expected:
        raise RegistryError(f"{name} version {version}: model file hash does not match its model_sha256 tag; refusing to load it")
    try:
        model = mlflow.pyfunc.load_model(str(local))  # unpickles a FashionClassifier: this project's serving code
    except RuntimeError as exc:  # FashionClassifier.load_context's own hash check
        raise RegistryError(f"{name} version {version}: {exc}") from None
    if not isinstance(model.unwrap_python_model(), FashionClassifier):
        raise RegistryError(f"{name} version {version}: not a model logged by this pipeline (no FashionClassifier)")
    return model
