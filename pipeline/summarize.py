"""Stage ``summarize``: every variant side by side in ``reports/summary.md``.

Reads ``reports/metrics/<variant>.json`` for the variants in ``params.yaml``; writes
``reports/summary.md``, sorted by validation accuracy (the selection criterion), naming the
best. ``fmnist run`` rewrites it with the measured wall time of the whole ``dvc repro``.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

from pipeline.config import Paths, load_params
from pipeline.data import DataError
from pipeline.io import atomic_write_text

log = logging.getLogger(__name__)


def load_metrics(paths: Paths, variants: list[str]) -> list[dict]:
    """The metrics of each variant; a DataError names any that has not been evaluated."""
    missing = [v for v in variants if not paths.metrics(v).exists()]
    if missing:
        raise DataError(f"no metrics for {', '.join(missing)}; run `dvc repro` to evaluate every variant first")
    return [json.loads(paths.metrics(v).read_text()) for v in variants]


def best_variant(metrics: list[dict]) -> dict:
    """The variant with the highest validation accuracy (ties: fewer parameters)."""
    return max(metrics, key=lambda m: (m["val_accuracy"], -m["params"]))


def render(metrics: list[dict], wall_seconds: float | None = None) -> str:
    rows = sorted(metrics, key=lambda m: (-m["val_accuracy"], m["params"]))  # the same order as best_variant
    best = best_variant(metrics)
    lines = [
        "# Variant comparison",
        "",
        "Selection uses the validation split (5,000 images held out of training); the test set",
        "(10,000 images) is read once per model, for these final figures.",
        "",
        "| variant | params | epochs | train time | val accuracy | test accuracy | macro F1 | ECE | hardest class (recall) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in rows:
        hardest, recall = min(m["per_class_recall"].items(), key=lambda kv: kv[1])
        lines.append(
            f"| {'**' + m['variant'] + '**' if m is best else m['variant']} | {m['params']:,} | {m['epochs_trained']} "
            f"| {m['train_seconds']:.0f} s | {m['val_accuracy']:.2%} | {m['test_accuracy']:.2%} | {m['macro_f1']:.4f} "
            f"| {m['ece']:.4f} | {hardest} ({recall:.1%}) |"
        )
    lines += ["", f"Best by validation accuracy: **{best['variant']}** ({best['test_accuracy']:.2%} test accuracy).", ""]
    total = sum(m["train_seconds"] for m in metrics)
    lines.append(f"Training time, all variants: {total / 60:.1f} min on {platform.machine()} ({_cpu_count()} cores).")
    if wall_seconds is not None:
        lines.append(f"Wall time of the `dvc repro` that produced these results (`fmnist run`): {wall_seconds / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def write(wall_seconds: float | None = None, root: Path | None = None) -> Path:
    params = load_params()
    paths = Paths(root) if root else Paths()
    out = paths.reports / "summary.md"
    atomic_write_text(out, render(load_metrics(paths, list(params.variants)), wall_seconds))
    return out


def main() -> None:
    log.info("wrote %s", write())


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
