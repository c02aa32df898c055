"""The champion/challenger gate, promotion and rollback, under one lock.

The gate scores the challenger and the current champion through their served interface on the
same test set (its SHA-256 checked against the one the challenger was evaluated on) and applies
:func:`pipeline.core.gate.decide`. Promotion moves ``previous`` to the old champion, then
``champion`` to the challenger; the decision and its reason are tagged on the version and
appended to its card, every alias move is appended to the model's alias history, and the model's
card is rewritten (:mod:`pipeline.services.cards`).

The registry lock around read-compare-set keeps two concurrent promotions from leaving the worse
model as champion. With a lock server (:func:`pipeline.adapters.mlflow.registry.lock_url`: the
PostgreSQL behind a shared MLflow) it holds across machines, on a lease; without one, a file
lock beside the store holds for one checkout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from pipeline.adapters import alerts, leases
from pipeline.adapters.files import file_sha256, load_split
from pipeline.adapters.locks import exclusive
from pipeline.adapters.mlflow import registry
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params
from pipeline.core.environment import REGISTRY_LEASE_S
from pipeline.core.errors import RegistryError
from pipeline.core.gate import Decision, brief, decide
from pipeline.core.metrics import score
from pipeline.services import cards

log = logging.getLogger(__name__)


@contextmanager
def registry_lock(name: str, paths: Paths) -> Iterator[leases.Lease]:
    """Hold the lock on ``name``'s aliases: in the lock server when there is one, else the file beside the store of
    ``paths``.

    ``FMNIST_REGISTRY_LEASE_S`` (default 30) is how long a silent holder keeps the shared lock.
    """
    url = registry.lock_url()
    if url is None:
        with exclusive(paths.registry_lock):
            yield leases.LOCAL
        return
    lease_s = float(os.environ.get(REGISTRY_LEASE_S, "30"))
    with leases.shared(url, f"fmnist registry {name}", lease_s=lease_s) as lease:
        yield lease


def evaluate_version(name: str, version: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Score a registered version on (x, y) through its served interface."""
    out = registry.load_version(name, version).predict(x)
    proba = np.asarray(out["probabilities"].tolist(), dtype=np.float64)
    return score(proba, y, class_names)


def gate(params: Params, paths: Paths, challenger: str, who: str = "`fmnist promote`") -> dict:
    """Run the gate for a registered ``challenger`` version on the test split of ``paths``; returns the promotion record.

    ``who`` names what ran it, in the version's card.
    """
    name, rules, test_file = params.registry.model_name, params.registry, paths.split("test")
    alert = alerts.destination()  # a malformed destination is refused before any work
    x, y = load_split(test_file)
    test_sha = file_sha256(test_file)
    expected = registry.version_tags(name, challenger).get("test_sha256")
    if expected and expected != test_sha:
        raise RegistryError(
            f"test set {test_file} changed since version {challenger} was evaluated (SHA-256 differs); rerun `dvc repro`"
        )
    with registry_lock(name, paths) as lease:
        before = registry.alias_version(name, "champion")
        chal = evaluate_version(name, challenger, x, y, params.base.class_names)
        champ = evaluate_version(name, before, x, y, params.base.class_names) if before and before != challenger else None
        decision = decide(chal, champ, rules) if before != challenger else Decision(False, "already champion")
        if decision.promote:
            lease.check()  # the lock is still ours: nobody else has moved an alias since we read them
            by, why = cards.actor(who), f"gate promoted version {challenger}: {decision.reason}"
            if before:
                registry.move_alias(name, "previous", before, why, by)
            registry.move_alias(name, "champion", challenger, why, by)
        record = {
            "model_name": name,
            "challenger_version": challenger,
            "champion_before": before,
            "champion_after": registry.alias_version(name, "champion"),
            "decision": "promoted" if decision.promote else "rejected",
            "reason": decision.reason,
            "test_sha256": test_sha,
            "scores": {"challenger": brief(chal), "champion": brief(champ) if champ else None},
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        registry.tag_version(name, challenger, {"gate.decision": record["decision"], "gate.reason": decision.reason})
        cards.record_decision(name, record, who)
    log.info("gate: version %s %s: %s", challenger, record["decision"], decision.reason)
    alert.send(
        f"{name}: the gate {record['decision']} version {challenger}",
        f"{decision.reason}. Champion before: {before or 'none'}, after: {record['champion_after']} ({who}).",
        "success" if decision.promote else "warning",
    )
    return record


def rollback(params: Params, paths: Paths, to: str | None = None, who: str = "`fmnist rollback`") -> tuple[str, str | None]:
    """Make ``to`` (default: ``previous``) the champion again, and the replaced champion ``previous``.

    ``to`` may be any version that was champion before (the alias history or its gate tag says so),
    so a rollback can go back more than one step. Returns (new champion, new previous).
    """
    name = params.registry.model_name
    with registry_lock(name, paths) as lease:
        champion = registry.alias_version(name, "champion")
        target = to or registry.alias_version(name, "previous")
        if target is None:
            raise RegistryError(f"{name} has no 'previous' version to roll back to; name one with --to VERSION")
        if target == champion:
            raise RegistryError(f"{name} version {target} is the champion already")
        if to is not None and not _was_champion(name, to):
            raise RegistryError(
                f"{name} version {to} was never champion, so there is nothing to roll back to; "
                f"`fmnist promote --version {to}` puts it through the gate"
            )
        lease.check()
        by, why = cards.actor(who), f"rollback to version {target}"
        registry.move_alias(name, "champion", target, why, by)
        if champion:
            registry.move_alias(name, "previous", champion, why, by)
        registry.tag_version(name, target, {"gate.rollback": f"restored as champion, replacing version {champion}"})
        cards.record_rollback(name, target, champion, who)
    return target, champion


def _was_champion(name: str, version: str) -> bool:
    moves = registry.alias_history(name)
    if any(m["alias"] == "champion" and version in (m["from"], m["to"]) for m in moves):
        return True
    return registry.version_tags(name, version).get("gate.decision") == "promoted"  # promoted before the history existed
