"""Model cards in the registry: a version's written when it is registered, extended by each gate decision
and rollback; the registered model's rewritten whenever an alias moves.

The version's lineage record (:class:`pipeline.core.card.Lineage`) is also kept as its tag
``fmnist.lineage`` (JSON), which ``fmnist lineage`` reads back: the card and the command show one record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time

from pipeline.adapters.dvc import lock_hashes
from pipeline.adapters.files import read_json
from pipeline.adapters.mlflow import query, registry
from pipeline.adapters.paths import Paths
from pipeline.core import card
from pipeline.core.environment import PARENT_RUN
from pipeline.core.errors import RegistryError

LINEAGE_TAG = "fmnist.lineage"


def collect_lineage(paths: Paths, variant: str, run_id: str) -> card.Lineage:
    """The lineage of the model that ``run_id`` trained: its run's tags, its parent run, ``dvc.lock`` and ``reports/data.json``."""
    run = query.run_record(run_id)
    if run is None:
        raise RegistryError(f"run {run_id} of {variant} is not in the MLflow store; was it logged to another one?")
    tags = run["tags"]
    parent = query.run_record(tags["mlflow.parentRunId"]) if tags.get("mlflow.parentRunId") else None
    stages = ("prepare", f"train@{variant}", f"evaluate@{variant}")
    hashes = {s: lock_hashes(paths.dvc_lock, s, ("outs",)) for s in stages}
    return card.Lineage(
        git_commit=tags.get("git.commit", ""),
        git_dirty=tags.get("git.dirty") == "true",
        exp_name=tags.get("dvc.exp_name", ""),
        exp_baseline_rev=tags.get("dvc.exp_baseline_rev", ""),
        run_id=run_id,
        parent_run_id=parent["run_id"] if parent else "",
        parent_run_name=parent["name"] if parent else "",
        prefect_flow_run_id=parent["tags"].get("prefect.flow_run_id", "") if parent else "",
        prepared_md5=tags.get("data.prepared_md5", ""),
        accepted_batches=(read_json(paths.data_report) or {}).get("accepted_batches", {}),
        stage_hashes={s: {p: h for p, h in outs.items() if not p.endswith(".png")} for s, outs in hashes.items() if outs},
    )


def write_version_card(name: str, version: str, metrics: dict, data: dict, lineage: card.Lineage) -> None:
    """Set a new version's description to its card, and its ``fmnist.lineage`` tag to the record the card shows."""
    registry.tag_version(name, version, {LINEAGE_TAG: json.dumps(dataclasses.asdict(lineage))})
    text = card.version_card(name, version, metrics, data, lineage, tta=metrics.get("tta", "none"))
    registry.set_version_description(name, version, text)


def read_lineage(name: str, version: str) -> card.Lineage | None:
    """The lineage record of a version (None for one registered before cards existed)."""
    raw = registry.version_tags(name, version).get(LINEAGE_TAG)
    return card.Lineage(**json.loads(raw)) if raw else None


def actor(who: str) -> str:
    """Who acts, for cards and the alias history: ``who`` (the command or stage), the host and process, and the Prefect
    flow run when a flow started it (the tag of the MLflow parent run it passed down in ``FMNIST_PARENT_RUN_ID``)."""
    parent = os.environ.get(PARENT_RUN)
    flow_run = (query.run_record(parent) or {"tags": {}})["tags"].get("prefect.flow_run_id") if parent else None
    return f"{who} on {socket.gethostname()} (pid {os.getpid()}{f', Prefect flow run {flow_run}' if flow_run else ''})"


def record_decision(name: str, record: dict, who: str) -> None:
    """Append the gate's decision to the challenger's card; rewrite the model's card."""
    version = record["challenger_version"]
    entry = card.gate_entry(record, actor(who))
    registry.set_version_description(name, version, card.with_entry(registry.version_description(name, version), entry))
    event = f"{record['decided_at']}: version {version} {record['decision']} by the gate ({who})"
    refresh_model_card(name, event)


def record_rollback(name: str, restored: str, replaced: str | None, who: str = "`fmnist rollback`") -> None:
    """Note a rollback on both versions' cards; rewrite the model's card."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    by = actor(who)
    notes = {restored: f"- {now}, {by}: **restored as champion**, replacing version {replaced}."}
    if replaced:
        notes[replaced] = f"- {now}, {by}: **rolled back**: version {restored} is champion again, this one is `previous`."
    for version, entry in notes.items():
        registry.set_version_description(name, version, card.with_entry(registry.version_description(name, version), entry))
    refresh_model_card(name, f"{now}: rollback to version {restored} ({who})")


def refresh_model_card(name: str, event: str) -> None:
    """Rewrite the registered model's description from its aliases, the champion's tags and the alias history."""
    found = registry.aliases(name)
    champion = registry.version_tags(name, found["champion"]) if "champion" in found else None
    registry.set_model_description(name, card.model_card(name, found, champion, event, registry.alias_history(name)))
