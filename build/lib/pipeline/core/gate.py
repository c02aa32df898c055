"""The champion/challenger rule: promote a challenger only if it beats the champion on the same test set.

A challenger becomes ``champion`` only if its test accuracy beats the champion's by
``registry.margin`` and no class's recall drops by more than ``registry.recall_tolerance``; with
no champion, it must reach ``registry.floor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Registry


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


def brief(scores: dict) -> dict:
    """The figures of a score that the promotion record keeps: test accuracy and per-class recall, rounded."""
    return {
        "test_accuracy": round(scores["test_accuracy"], 6),
        "per_class_recall": {k: round(v, 6) for k, v in scores["per_class_recall"].items()},
    }
