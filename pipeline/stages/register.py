"""Stage ``register``: register the best variant and put it through the champion/challenger gate.

Reads ``reports/metrics/<variant>.json`` (the best by validation accuracy is chosen),
``data/prepared/test.npz`` and ``registry.*``. Registers the variant's serving model as a new
version with alias ``challenger``, runs :func:`pipeline.services.promotion.gate`, and writes
``reports/promotion.json``; with a parent run (``fmnist run``, a flow), records the decision on it.
"""

from __future__ import annotations

import logging

from pipeline.adapters.files import read_metrics, write_json
from pipeline.adapters.mlflow import registry, runs
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core.config import load_params
from pipeline.core.summary import best_variant
from pipeline.services.promotion import gate

log = logging.getLogger(__name__)


def main() -> dict:
    params, paths = load_params(), Paths()
    best = best_variant(read_metrics({v: paths.metrics(v) for v in params.variants}))
    tags = {
        "variant": best["variant"],
        "val_accuracy": f"{best['val_accuracy']:.6f}",
        "test_accuracy": f"{best['test_accuracy']:.6f}",
        "test_sha256": best["test_sha256"],
    }
    name = params.registry.model_name
    version = registry.register_version(name, best["mlflow_run_id"], tags)
    registry.set_alias(name, "challenger", version)
    record = {"variant": best["variant"]} | gate(params, version, paths.split("test"))
    write_json(paths.promotion, record)
    if parent := runs.parent_run_id():
        runs.record_promotion(parent, record)
    return record


if __name__ == "__main__":
    run_entry(main, tensorflow=True)  # the gate loads the models
