"""The Model Registry: versions, aliases (``champion``, ``challenger``, ``previous``), tags, descriptions, and loading a version."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.adapters.files import file_sha256
from pipeline.adapters.mlflow.serving import FashionClassifier
from pipeline.adapters.mlflow.store import client, tracking_uri
from pipeline.core.environment import REGISTRY_LOCK_URL
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
        name,
        model_uri,
        run_id=run_id,
        tags=tags | {"model_sha256": run.data.tags.get("model_sha256", "")},
        # an MLflow server refuses a logged model's models:/<id> source without its id
        model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None,
    )
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


HISTORY_TAG = (
    "alias_history."  # + nanoseconds since the epoch and 4 hex digits: one registered-model tag per move, never rewritten
)


def move_alias(name: str, alias: str, version: str, reason: str, by: str) -> dict:
    """Point ``alias`` at ``version`` and append the move to the model's alias history; returns the record.

    Each record is a new tag whose key sorts by time, so writers need no coordination to append.
    """
    c = client()
    before = alias_version(name, alias)
    c.set_registered_model_alias(name, alias, version)
    record = {
        "alias": alias,
        "from": before,
        "to": str(version),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by": by,
        "reason": reason,
    }
    c.set_registered_model_tag(name, f"{HISTORY_TAG}{time.time_ns():020d}-{secrets.token_hex(2)}", json.dumps(record))
    return record


def alias_history(name: str) -> list[dict]:
    """Every recorded alias move of the model, oldest first (empty if the model does not exist)."""
    try:
        tags = client().get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_TAG))]


def lock_url() -> str | None:
    """The PostgreSQL that serialises alias moves across machines, or None (then a file lock does, for one checkout).

    ``FMNIST_REGISTRY_LOCK_URL`` when set (the database behind a shared MLflow server, or any that
    every machine reaches); otherwise the tracking store itself when it is PostgreSQL.
    """
    url = os.environ.get(REGISTRY_LOCK_URL) or tracking_uri()
    if re.match(r"postgres(ql)?(\+\w+)?://", url):
        return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)  # psycopg's form, whatever driver MLflow named
    if os.environ.get(REGISTRY_LOCK_URL):
        raise RegistryError(f"FMNIST_REGISTRY_LOCK_URL: expected a postgresql:// URL, got {url.split('@')[-1]!r}")
    return None


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def aliases(name: str) -> dict[str, str]:
    """Every alias of the registered model and the version it points to (empty if the model does not exist)."""
    try:
        return {a: str(v) for a, v in client().get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def version_run_id(name: str, version: str) -> str:
    """The MLflow run that logged a version."""
    try:
        return client().get_model_version(name, version).run_id
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: not in the registry at {tracking_uri()} ({exc.message})") from None


def versions_of_run(name: str, run_id: str) -> list[str]:
    """The versions of ``name`` registered from ``run_id``, oldest first."""
    found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted((str(mv.version) for mv in found), key=int)


def version_description(name: str, version: str) -> str:
    """A version's description (its model card), or empty."""
    try:
        return client().get_model_version(name, version).description or ""
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: not in the registry at {tracking_uri()} ({exc.message})") from None


def set_version_description(name: str, version: str, text: str) -> None:
    client().update_model_version(name, version, description=text)


def set_model_description(name: str, text: str) -> None:
    client().update_registered_model(name, description=text)


def model_description(name: str) -> str:
    return client().get_registered_model(name).description or ""


def version_url(name: str, version: str) -> str:
    """Where a version's page (with its card) is in the MLflow UI: this server's, or `fmnist ui`'s for a local store."""
    base = tracking_uri() if tracking_uri().startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/models/{name}/versions/{version}"


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


def version_artifacts(tracking_uri: str) -> list[tuple[str, str, str]]:
    """``(name, version, artifact URI of its model files)`` for every version of every registered model at ``tracking_uri``."""
    from mlflow.tracking import MlflowClient

    c, found = MlflowClient(tracking_uri=tracking_uri), []
    for model in c.search_registered_models(max_results=1000):
        for mv in c.search_model_versions(f"name = '{model.name}'", max_results=10000):
            uri = mv.source or ""
            if uri.startswith("models:/"):  # a logged model (MLflow 3): its own artifact location
                uri = c.get_logged_model(uri.removeprefix("models:/")).artifact_location
            found.append((model.name, str(mv.version), uri))
    return found
