"""Stage ``register``: register the best variant and put it through the champion/challenger gate.

Reads ``reports/metrics/<variant>.json`` (the best by validation accuracy is chosen),
``reports/data.json``, ``dvc.lock``, ``data/prepared/test.npz`` and ``registry.*``. Registers the
variant's serving model as a new version with alias ``challenger`` and its model card as the
version's description, runs :func:`pipeline.services.promotion.gate` (which adds its decision to
the card), and writes ``reports/promotion.json``; with a parent run (``fmnist run``, a flow, a DVC
experiment), records the decision on it.
"""

from __future__ import annotations

import logging

from pipeline.adapters.files import read_json, read_metrics, write_json
from pipeline.adapters.mlflow import registry, runs
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.summary import best_variant
from pipeline.services import cards
from pipeline.services.promotion import gate

log = logging.getLogger(__name__)


def main() -> dict:
    params, paths = load_params(), Paths()
    with runs.in_experiment(params, paths, last=True):  # the last stage of a DVC experiment closes its parent run
        return _register(params, paths)


def _register(params: Params, paths: Paths) -> dict:
    best = best_variant(read_metrics({v: paths.metrics(v) for v in params.variants}))
    data = read_json(paths.data_report)
    if data is None:
        raise PipelineError(f"{paths.data_report} is missing (the card needs the split sizes); run `dvc repro prepare`")
    lineage = cards.collect_lineage(paths, best["variant"], best["mlflow_run_id"])
    tags = {
        "variant": best["variant"],
        "val_accuracy": f"{best['val_accuracy']:.6f}",
        "test_accuracy": f"{best['test_accuracy']:.6f}",
        "tta": best.get("tta", "none"),
        "macro_f1": f"{best['macro_f1']:.6f}",
        "test_sha256": best["test_sha256"],
    } | ({"dvc.exp_name": lineage.exp_name} if lineage.exp_name else {})
    name = params.registry.model_name
    version = registry.register_version(name, best["mlflow_run_id"], tags)
    cards.write_version_card(name, version, best, data, lineage)
    by = cards.actor("`register` stage")
    registry.move_alias(name, "challenger", version, f"registered: best variant {best['variant']} by validation accuracy", by)
    record = {"variant": best["variant"]} | gate(params, paths, version, who="`register` stage")
    write_json(paths.promotion, record)
    if parent := runs.parent_run_id(params, paths):
        runs.record_promotion(parent, record)
    return record


if __name__ == "__main__":
    run_entry(main, tensorflow=True)  # the gate loads the models
