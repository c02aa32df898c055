"""What the registry and ``dvc.lock`` name but the stack's S3 endpoint no longer holds.

After an unclean stop the endpoint comes back with the copy of the last clean ``down``
(:mod:`pipeline.stack.s3`), so objects written since are gone. ``fmnist stack up`` and ``status``
report them, so a model that fails to load is explained before anyone loads it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.adapters import dvc
from pipeline.stack import s3

ARTIFACTS = "artifacts"  # the MLflow server's --artifacts-destination s3://fmnist-mlflow/artifacts
DVC_PREFIX = "cache/files/md5"  # the DVC remote s3://fmnist-dvc/cache, DVC 3's layout


def _model_keys(tracking_uri: str) -> dict[str, str]:
    """``name vN`` -> the key of the ``MLmodel`` file of every registered version (imports MLflow: seconds)."""
    from pipeline.adapters.mlflow.registry import version_artifacts

    keys = {}
    for name, version, uri in version_artifacts(tracking_uri):
        if uri.startswith("mlflow-artifacts:/"):  # served by the stack's MLflow server from the bucket
            keys[f"{name} v{version}"] = f"{ARTIFACTS}/{uri.removeprefix('mlflow-artifacts:/').strip('/')}/MLmodel"
    return keys


def _dvc_key(md5: str) -> str:
    return f"{DVC_PREFIX}/{md5[:2]}/{md5[2:]}"


def _dvc_keys(repo: Path, port: int, present: set[str]) -> dict[str, str]:
    """``stage: path`` -> remote key of every cached output ``dvc.lock`` records, and of each file of a directory on it."""
    keys = {label: _dvc_key(md5) for label, md5 in dvc.cached_outputs(repo).items()}
    dirs = {label: key for label, key in keys.items() if key.endswith(".dir")}
    for label, key in dirs.items():
        if key in present:  # the directory's manifest is there: each of its files must be too
            for entry in s3.get_json(port, s3.BUCKETS[1], key):
                keys[f"{label}/{entry['relpath']}"] = _dvc_key(entry["md5"])
    return keys


def missing(state: dict, tracking_uri: str) -> dict[str, list[str]]:
    """The registered versions whose model files, and the ``dvc.lock`` outputs whose objects, the endpoint lacks.

    A ``dvc.lock`` output that was never pushed is listed too: ``dvc push`` from a checkout that has it puts it back.
    """
    port = state["s3"]["port"]
    in_models, in_dvc = (s3.keys(port, bucket) for bucket in s3.BUCKETS)  # each bucket listed once
    models, outputs = _model_keys(tracking_uri), _dvc_keys(Path(state["repo"]), port, in_dvc)
    return {
        "models": [label for label, key in models.items() if key not in in_models],
        "dvc": [label for label, key in outputs.items() if key not in in_dvc],
    }
