"""The champion/challenger gate, promotion and rollback, under one lock.

A challenger becomes ``champion`` only if, on the same test set (its SHA-256 checked), it beats
the current champion's accuracy by ``registry.margin`` and no class's recall drops by more than
``registry.recall_tolerance``; with no champion, it must reach ``registry.floor``. Promotion
moves ``previous`` to the old champion, then ``champion`` to the challenger; the decision and
its reason are tagged on the version and written to ``reports/promotion.json``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.config import Params, Registry, RegistryError, repo_root
from pipeline.evaluate import score
from pipeline.io import file_sha256, load_split, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


_EPS = 1e-9  # float slack: 0.8130 - 0.8110 is 0.0019999..., which is a gain of exactly 20 images in 10,000


def decide(challenger: dict, champion: dict | None, rules: Registry) -> Decision:
    """Compare test scores (``test_accuracy``, ``per_class_recall``) of challenger and champion."""
    acc = challenger["test_accuracy"]
    if champion is None:
        if acc >= rules.floor:
            return Decision(True, f"no champion yet; test accuracy {acc:.4f} clears the floor {rules.floor:.4f}")
        return Decision(False, f"no champion yet, but test accuracy {acc:.4f} is below the floor {rules.floor:.4f}")
    gain = acc - champion["test_accuracy"]
    if gain < rules.margin - _EPS:
        return Decision(
            False,
            f"test accuracy {acc:.4f} vs champion {champion['test_accuracy']:.4f}: gain {gain:+.4f} is below the margin {rules.margin:.4f}",
        )
    drops = {c: champion["per_class_recall"][c] - r for c, r in challenger["per_class_recall"].items()}
    worst = max(drops, key=drops.get)
    if drops[worst] > rules.recall_tolerance + _EPS:
        return Decision(
            False, f"recall of {worst} drops by {drops[worst]:.4f}, more than the tolerance {rules.recall_tolerance:.4f}"
        )
    return Decision(
        True,
        f"test accuracy {acc:.4f} beats champion {champion['test_accuracy']:.4f} by {gain:+.4f}; no class recall drops more than {rules.recall_tolerance:.4f}",
    )


def lock_path() -> Path:
    return Path(os.environ.get("FMNIST_REGISTRY_LOCK") or repo_root() / ".registry.lock")


@contextmanager
def registry_lock(enabled: bool = True) -> Iterator[None]:
    """An exclusive lock around read-compare-set of the aliases (waits for the other holder)."""
    if not enabled:
        yield
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hold() -> None:
    """Test hook: wait ``$FMNIST_GATE_HOLD_S`` seconds between deciding and moving the aliases.

    Widens the read-compare-set window so a test can order two racing gates deterministically
    (and show that, without the lock, the slower and worse one wins).
    """
    seconds = float(os.environ.get("FMNIST_GATE_HOLD_S") or 0)
    if seconds > 0:
        time.sleep(seconds)


def evaluate_version(name: str, version: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Score a registered version on (x, y) through its served interface."""
    out = tracking.load_version(name, version).predict(x)
    proba = np.asarray(out["probabilities"].tolist(), dtype=np.float64)
    return score(proba, y, class_names)


def gate(params: Params, challenger: str, test_file: Path, *, lock: bool = True) -> dict:
    """Run the gate for a registered ``challenger`` version; returns the promotion record."""
    name, rules = params.registry.model_name, params.registry
    x, y = load_split(test_file)
    test_sha = file_sha256(test_file)
    expected = tracking.version_tags(name, challenger).get("test_sha256")
    if expected and expected != test_sha:
        raise RegistryError(
            f"test set {test_file} changed since version {challenger} was evaluated (SHA-256 differs); rerun `dvc repro`"
        )
    with registry_lock(lock):
        before = tracking.alias_version(name, "champion")
        chal = evaluate_version(name, challenger, x, y, params.base.class_names)
        champ = evaluate_version(name, before, x, y, params.base.class_names) if before and before != challenger else None
        decision = decide(chal, champ, rules) if before != challenger else Decision(False, "already champion")
        if decision.promote:
            _hold()
            if before:
                tracking.set_alias(name, "previous", before)
            tracking.set_alias(name, "champion", challenger)
        after = tracking.alias_version(name, "champion")
    record = {
        "model_name": name,
        "challenger_version": challenger,
        "champion_before": before,
        "champion_after": after,
        "decision": "promoted" if decision.promote else "rejected",
        "reason": decision.reason,
        "test_sha256": test_sha,
        "scores": {"challenger": _brief(chal), "champion": _brief(champ) if champ else None},
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tracking.tag_version(name, challenger, {"gate.decision": record["decision"], "gate.reason": decision.reason})
    log.info("gate: version %s %s: %s", challenger, record["decision"], decision.reason)
    return record


def _brief(scores: dict) -> dict:
    return {
        "test_accuracy": round(scores["test_accuracy"], 6),
        "per_class_recall": {k: round(v, 6) for k, v in scores["per_class_recall"].items()},
    }


def rollback(params: Params) -> tuple[str, str]:
    """Swap ``champion`` and ``previous``; returns (new champion, new previous)."""
    name = params.registry.model_name
    with registry_lock():
        champion, previous = tracking.alias_version(name, "champion"), tracking.alias_version(name, "previous")
        if previous is None:
            raise RegistryError(f"{name} has no 'previous' version to roll back to")
        tracking.set_alias(name, "champion", previous)
        if champion:
            tracking.set_alias(name, "previous", champion)
        tracking.tag_version(name, previous, {"gate.rollback": f"restored as champion, replacing version {champion}"})
    return previous, champion


def write_record(record: dict, path: Path) -> None:
    write_json(path, record)


def cli(args) -> None:
    from pipeline.config import Paths, load_params

    params = load_params()
    name = params.registry.model_name
    version = args.version or tracking.alias_version(name, "challenger")
    if version is None:
        raise RegistryError(f"{name} has no 'challenger'; run `dvc repro` or pass --version")
    record = gate(params, str(version), Paths().prepared / "test.npz")
    write_record(record, Paths().reports / "promotion.json")
    print(f"version {version}: {record['decision']}: {record['reason']}")


def rollback_cli(args) -> None:
    from pipeline.config import load_params

    champion, previous = rollback(load_params())
    print(f"champion is now version {champion} (previous: {previous})")
