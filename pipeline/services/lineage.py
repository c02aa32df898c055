"""``fmnist lineage``: one record across git, DVC, MLflow and Prefect, followed both ways.

From a registered version (or alias) back to its git commit, DVC experiment (and the commit DVC
made of it), the ``dvc.lock`` hashes of its stages, its MLflow run and parent, the Prefect flow
run and the accepted data batches; the record is the one its card shows (tag ``fmnist.lineage``).
From an MLflow run id or a DVC experiment name forward to the versions it produced.
"""

from __future__ import annotations

import dataclasses
import re

from pipeline.adapters.dvc import experiment_commits
from pipeline.adapters.mlflow import query, registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params
from pipeline.core.errors import RegistryError
from pipeline.services import cards


def resolve_version(name: str, ref: str) -> str | None:
    """The version ``ref`` names: ``3``, ``champion``, ``@champion``, ``models:/<name>/3`` or ``models:/<name>@champion``; else None."""
    ref = ref.removeprefix(f"models:/{name}").lstrip("/")
    if ref.isdigit():
        return ref
    return registry.aliases(name).get(ref.lstrip("@"))


def of_version(params: Params, paths: Paths, version: str) -> dict:
    """Where a registered version came from (its DVC experiment's commit looked up in the repository of ``paths``)."""
    name = params.registry.model_name
    lin = cards.read_lineage(name, version)
    if lin is None:
        raise RegistryError(
            f"{name} version {version} has no lineage record (tag {cards.LINEAGE_TAG}): it was registered before cards existed"
        )
    exp_commit = experiment_commits(paths.store_root).get(lin.exp_name, "") if lin.exp_name else ""
    aliases = sorted(a for a, v in registry.aliases(name).items() if v == version)
    return {"model": name, "version": version, "aliases": aliases, "exp_commit": exp_commit} | dataclasses.asdict(lin)


def versions_from(params: Params, ref: str) -> dict:
    """The versions an MLflow run (a variant run, or a parent and its children) or a DVC experiment produced."""
    name = params.registry.model_name
    run = query.run_record(ref) if re.fullmatch(r"[0-9a-f]{32}", ref) else None
    if run is not None:
        kind, found = "mlflow run", [run, *query.child_runs(params, ref)]
    else:
        kind, found = "dvc experiment", query.experiment_runs(params, ref)
    if not found:
        raise RegistryError(
            f"{ref!r} is not a version or alias of {name}, an MLflow run id, or a DVC experiment with runs in {tracking_uri()}; "
            "list experiments with `dvc exp show` and versions with `fmnist card`"
        )
    versions = sorted({v for r in found for v in registry.versions_of_run(name, r["run_id"])}, key=int)
    runs = [{"run_id": r["run_id"], "name": r["name"], "role": r["tags"].get("fmnist.role", "")} for r in found]
    return {"model": name, "ref": ref, "kind": kind, "runs": runs, "versions": versions}


def lineage(params: Params, paths: Paths, ref: str) -> dict:
    """Either record, by what ``ref`` is: a version or alias leads back, anything else forward."""
    version = resolve_version(params.registry.model_name, ref)
    return of_version(params, paths, version) if version else versions_from(params, ref)
