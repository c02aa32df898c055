"""Stage ``evaluate@<variant>``: final figures of one trained variant on the untouched test set.

Reads ``models/<variant>/{model.keras,history.csv,train.json}`` and ``data/prepared/{val,test}.npz``.
Scores with the test-time augmentation of ``evaluate.tta.<variant>`` (validation and test alike), the way the
served model predicts.
Writes ``reports/metrics/<variant>.json``, ``reports/confusion/<variant>{.csv,-pairs.csv,.png}``
and ``reports/figures/<variant>-{curves,mistakes}.png``, and logs them, with the served model,
to the variant's MLflow run.
"""

from __future__ import annotations

import json
import logging
import sys

from pipeline.adapters.files import atomic_write_text, file_sha256, load_split, read_history, save_figure, write_json
from pipeline.adapters.mlflow.evaluation import log_evaluation
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core import figures, metrics
from pipeline.core.config import load_params
from pipeline.core.inference import accuracy, predict_proba

log = logging.getLogger(__name__)


def main(variant: str) -> None:
    import keras  # after run_entry has set TensorFlow's log level

    params, paths = load_params(), Paths()
    names = params.base.class_names
    info = json.loads(paths.train_info(variant).read_text())
    model = keras.saving.load_model(paths.model_file(variant), compile=False, safe_mode=True)
    tta = params.evaluate.tta_of(variant)  # the served model computes the same function with the same views
    vx, vy = load_split(paths.split("val"))
    x, y = load_split(paths.split("test"))
    proba = predict_proba(model, x, tta)
    keys = ("variant", "architecture", "settings", "params", "epochs_trained", "best_epoch", "train_seconds", "train_images")
    scores = {k: info[k] for k in keys} | {"tta": tta, "trained_val_accuracy": info["val_accuracy"]}
    scores |= {"val_accuracy": accuracy(model, vx, vy, tta)}
    scores |= metrics.score(proba, y, names)
    cm = metrics.confusion(y, proba.argmax(axis=1))
    scores |= {"worst_confusions": metrics.worst_confusions(cm, names)}
    scores |= {"mlflow_run_id": info["mlflow_run_id"], "test_sha256": file_sha256(paths.split("test"))}
    drawn = {  # MLflow artifact name: (report path, figure)
        "confusion_matrix.png": (
            paths.confusion(variant, ".png"),
            figures.plot_confusion(cm, names, f"{variant}: test confusion matrix"),
        ),
        "curves.png": (paths.figure(variant, "curves"), figures.plot_curves(read_history(paths.history(variant)), variant)),
        "mistakes.png": (paths.figure(variant, "mistakes"), figures.plot_mistakes(x, y, proba, names)),
    }
    atomic_write_text(paths.confusion(variant), metrics.confusion_csv(cm, names))
    atomic_write_text(paths.confusion(variant, "-pairs.csv"), metrics.confusion_long_csv(cm, names))
    if info["mlflow_run_id"]:
        figs = {name: fig for name, (_, fig) in drawn.items()}
        log_evaluation(info["mlflow_run_id"], scores, cm, figs, paths.model_file(variant), paths.history(variant), names)
    for path, fig in drawn.values():
        save_figure(fig, path)
    write_json(paths.metrics(variant), scores)  # last: its presence means the evaluation completed
    log.info(
        "%s: test accuracy %.4f, macro F1 %.4f, ECE %.4f", variant, scores["test_accuracy"], scores["macro_f1"], scores["ece"]
    )


if __name__ == "__main__":
    run_entry(lambda: main(sys.argv[1]), tensorflow=True)
