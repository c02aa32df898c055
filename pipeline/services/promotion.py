"""The champion/challenger gate, promotion and rollback, under one lock.

The gate scores the challenger and the current champion through their served interface on the
same test set (its SHA-256 checked against the one the challenger was evaluated on) and applies
:func:`pipeline.core.gate.decide`. Promotion moves ``previous`` to the old champion, then
``champion`` to the challenger; the decision and its reason are tagged on the version and
appended to its card, and the model's card is rewritten (:mod:`pipeline.services.cards`). The
registry lock around read-compare-set keeps two concurrent promotions from leaving the worse
model as champion.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.adapters.files import file_sha256, load_split
from pipeline.adapters.locks import exclusive
from pipeline.adapters.mlflow import registry
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params
from pipeline.core.errors import RegistryError
from pipeline.core.gate import Decision, brief, decide
from pipeline.core.metrics import score
from pipeline.services import cards

log = logging.getLogger(__name__)


def evaluate_version(name: str, version: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Score a registered version on (x, y) through its served interface."""
    out = registry.load_version(name, version).predict(x)
    proba = np.asarray(out["probabilities"].tolist(), dtype=np.float64)
    return score(proba, y, class_names)


def gate(params: Params, challenger: str, test_file: Path, who: str = "`fmnist promote`") -> dict:
    """Run the gate for a registered ``challenger`` version; returns the promotion record.

    ``who`` names what ran it, in the version's card.
    """
    name, rules = params.registry.model_name, params.registry
    x, y = load_split(test_file)
    test_sha = file_sha256(test_file)
    expected = registry.version_tags(name, challenger).get("test_sha256")
    if expected and expected != test_sha:
        raise RegistryError(
            f"test set {test_file} changed since version {challenger} was evaluated (SHA-256 differs); rerun `dvc repro`"
        )
    with exclusive(Paths().registry_lock):
        before = registry.alias_version(name, "champion")
        chal = evaluate_version(name, challenger, x, y, params.base.class_names)
        champ = evaluate_version(name, before, x, y, params.base.class_names) if before and before != challenger else None
        decision = decide(chal, champ, rules) if before != challenger else Decision(False, "already champion")
        if decision.promote:
            if before:
                registry.set_alias(name, "previous", before)
            registry.set_alias(name, "champion", challenger)
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
    return record


def rollback(params: Params) -> tuple[str, str | None]:
    """Swap ``champion`` and ``previous``; returns (new champion, new previous)."""
    name = params.registry.model_name
    with exclusive(Paths().registry_lock):
        champion, previous = registry.alias_version(name, "champion"), registry.alias_version(name, "previous")
        if previous is None:
            raise RegistryError(f"{name} has no 'previous' version to roll back to")
        registry.set_alias(name, "champion", previous)
        if champion:
            registry.set_alias(name, "previous", champion)
        registry.tag_version(name, previous, {"gate.rollback": f"restored as champion, replacing version {champion}"})
        cards.record_rollback(name, previous, champion)
    return previous, champion
