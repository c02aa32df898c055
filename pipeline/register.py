"""Stage ``register``: register the best variant and put it through the champion/challenger gate.

Reads ``reports/metrics/<variant>.json`` (the best by validation accuracy is chosen),
``data/prepared/test.npz`` and ``registry.*``. Registers the variant's serving model as a new
version with alias ``challenger``, runs :func:`pipeline.promote.gate`, and writes
``reports/promotion.json``. Closes the pipeline's parent MLflow run.
"""

from __future__ import annotations

import logging

from pipeline import promote, tracking
from pipeline.config import Paths, load_params
from pipeline.io import write_json
from pipeline.summarize import best_variant, load_metrics

log = logging.getLogger(__name__)


def main() -> dict:
    params = load_params()
    paths = Paths()
    best = best_variant(load_metrics(paths, list(params.variants)))
    tags = {
        "variant": best["variant"],
        "val_accuracy": f"{best['val_accuracy']:.6f}",
        "test_accuracy": f"{best['test_accuracy']:.6f}",
        "test_sha256": best["test_sha256"],
    }
    version = tracking.register_version(params, best["mlflow_run_id"], tags)
    tracking.set_alias(params.registry.model_name, "challenger", version)
    record = {"variant": best["variant"]} | promote.gate(params, version, paths.prepared / "test.npz")
    write_json(paths.reports / "promotion.json", record)
    parent = tracking.open_pipeline_run(params)
    if parent:
        tracking.finish_pipeline_run(parent, record)
    return record


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
