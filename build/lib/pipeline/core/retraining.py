"""The retraining decision: retrain when there is new data, drift, an out-of-date pipeline, or ``--force``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.drift import DriftReport


@dataclass(frozen=True)
class Plan:
    """Whether to retrain, and every reason that says so (or why not)."""

    retrain: bool
    reasons: tuple[str, ...]


def plan(accepted_images: int, report: DriftReport | None, stale: list[str], force: bool) -> Plan:
    """Retrain when there is new data, drift over a threshold, an out-of-date pipeline, or ``force``."""
    reasons = [f"{accepted_images} new images accepted"] if accepted_images else []
    reasons += report.reasons if report else []
    reasons += [f"pipeline out of date (dvc status: {', '.join(stale)})"] if stale else []
    reasons += ["forced (--force)"] if force else []
    if reasons:
        return Plan(True, tuple(reasons))
    return Plan(False, ("nothing new: no new images accepted and the pipeline is up to date",))
