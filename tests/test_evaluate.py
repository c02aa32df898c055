"""Stages ``evaluate`` and ``summarize``: metrics on toy inputs, the confusion CSVs, the comparison table."""

from __future__ import annotations

import csv
import io
import json
import math

import keras
import numpy as np
import pytest

from pipeline.adapters.files import read_history, read_metrics
from pipeline.adapters.paths import Paths
from pipeline.core import summary
from pipeline.core.errors import DataError
from pipeline.core.inference import predict_proba
from pipeline.core.metrics import confusion, confusion_csv, confusion_long_csv, expected_calibration_error, score
from pipeline.core.models import build

NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def confident(pred: np.ndarray, confidence: float) -> np.ndarray:
    """Probabilities putting ``confidence`` on ``pred`` and the rest evenly on the other nine classes."""
    proba = np.full((len(pred), 10), (1 - confidence) / 9)
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 predictions at 80% confidence, 8 right; 10 at 60% confidence, 6 right
    y = np.zeros(20, int)
    pred = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    proba = np.vstack([confident(pred[:10], 0.8), confident(pred[10:], 0.6)])
    assert expected_calibration_error(proba, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_model_is_the_gap():
    y = np.zeros(100, int)
    pred = np.array([0] * 50 + [1] * 50)  # half right at 99% confidence
    assert expected_calibration_error(confident(pred, 0.99), y) == pytest.approx(0.49)


def test_ece_weights_bins_by_their_share():
    y = np.zeros(40, int)
    pred = np.array([0] * 30 + [1] * 10)
    proba = np.vstack([confident(pred[:30], 0.95), confident(pred[30:], 0.95)])  # one bin: 75% right at 95%
    assert expected_calibration_error(proba, y) == pytest.approx(0.20)
    under = np.vstack([confident(pred[:20], 0.5), confident(pred[20:], 0.9)])  # [0.5: 20/20] [0.9: 10/20]
    assert expected_calibration_error(under, y) == pytest.approx(0.5 * 0.5 + 0.5 * 0.4)


def test_score_on_toy_predictions():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    proba = confident(pred, 0.7)
    metrics = score(proba, y, NAMES)
    assert metrics["test_accuracy"] == pytest.approx(4 / 6)
    p_true = np.where(pred == y, 0.7, 0.3 / 9)
    assert metrics["test_loss"] == pytest.approx(-np.mean(np.log(p_true)))
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 1 R 1/2; seven classes absent: 0
    f1 = [0.5, 0.8, 2 / 3] + [0.0] * 7
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))
    assert metrics["per_class_recall"] == pytest.approx(dict(zip(NAMES, [0.5, 1.0, 0.5] + [0.0] * 7)))
    assert metrics["per_class_precision"]["Trouser"] == pytest.approx(2 / 3)
    assert metrics["per_class_f1"]["Pullover"] == pytest.approx(2 / 3)
    assert list(metrics["per_class_f1"]) == list(NAMES)
    assert metrics["ece"] == pytest.approx(abs(4 / 6 - 0.7))
    json.dumps(metrics)  # plain Python types: it becomes reports/metrics/<variant>.json


def test_score_loss_is_finite_for_a_zero_probability():
    proba = np.eye(10)[[1, 2]]  # certain and wrong on the first
    assert math.isfinite(score(proba, np.array([0, 2]), NAMES)["test_loss"])


def test_confusion_csv_rows_are_true_columns_predicted():
    cm = np.arange(100).reshape(10, 10)  # cm[true, pred] = 10 * true + pred
    rows = list(csv.reader(io.StringIO(confusion_csv(cm, NAMES))))
    assert rows[0] == ["true/predicted", *NAMES]
    assert [row[0] for row in rows[1:]] == list(NAMES)
    table = {row[0]: dict(zip(NAMES, map(int, row[1:]))) for row in rows[1:]}
    assert table["Trouser"]["Pullover"] == 12  # true Trouser (1) predicted Pullover (2)
    assert table["Ankle boot"]["T-shirt/top"] == 90


def test_confusion_pairs_csv_has_one_row_per_image():
    cm = np.zeros((10, 10), int)
    cm[0, 0], cm[6, 0] = 3, 2
    rows = list(csv.DictReader(io.StringIO(confusion_long_csv(cm, NAMES))))
    assert len(rows) == 5
    assert sum(r == {"actual": "Shirt", "predicted": "T-shirt/top"} for r in rows) == 2


def test_predict_proba_rows_are_distributions_independent_of_batching():
    rng = np.random.default_rng(0)
    model = build("tutorial_cnn")
    x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    proba = predict_proba(model, x, batch_size=5)
    assert proba.shape == (12, 10) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(proba[7:8], predict_proba(model, x[7:8]), atol=1e-6)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_read_history(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n1,0.5,1.2,0.6,1.0\n2,0.7,0.8,0.72,0.9\n")
    assert read_history(path) == {"accuracy": [0.5, 0.7], "loss": [1.2, 0.8], "val_accuracy": [0.6, 0.72], "val_loss": [1.0, 0.9]}


# --- summarize ------------------------------------------------------------------------------


def metrics(variant: str, val: float, test: float, params: int = 257_162) -> dict:
    recall = dict.fromkeys(NAMES, 0.95) | {"Shirt": 0.61}
    return {
        "variant": variant,
        "params": params,
        "epochs_trained": 10,
        "train_seconds": 95.0,
        "val_accuracy": val,
        "test_accuracy": test,
        "macro_f1": test - 0.001,
        "ece": 0.02,
        "per_class_recall": recall,
    }


def _table_order(text: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    return [row.split("|")[1].strip().strip("*") for row in rows]


def test_render_sorts_by_validation_accuracy_and_names_the_best():
    text = summary.render(
        [metrics("baseline", 0.91, 0.92), metrics("wide", 0.94, 0.93), metrics("dropout", 0.92, 0.935)], "x86_64", 2
    )
    assert _table_order(text) == ["wide", "dropout", "baseline"]
    assert "| **wide** |" in text
    assert "Best by validation accuracy: **wide** (93.00% test accuracy)" in text  # not the best test accuracy
    assert "Shirt (61.0%)" in text
    assert "257,162" in text


def test_render_breaks_ties_like_best_variant():
    big, small = metrics("big", 0.93, 0.93, params=1_000_000), metrics("small", 0.93, 0.92, params=100_000)
    text = summary.render([big, small], "x86_64", 2)
    assert summary.best_variant([big, small])["variant"] == "small"
    assert _table_order(text) == ["small", "big"]
    assert "| **small** |" in text


def test_render_reports_the_training_time_and_where():
    text = summary.render([metrics("baseline", 0.9, 0.9), metrics("dropout", 0.9, 0.9)], "aarch64", 4)
    assert "Training time, all variants: 3.2 min on aarch64 (4 cores)." in text  # 2 x 95 s


def test_load_metrics_names_the_missing_variants(tmp_path):
    paths = Paths(tmp_path)
    paths.metrics("baseline").parent.mkdir(parents=True)
    paths.metrics("baseline").write_text(json.dumps(metrics("baseline", 0.9, 0.9)))
    assert read_metrics({"baseline": paths.metrics("baseline")})[0]["variant"] == "baseline"
    with pytest.raises(DataError, match="no metrics for dropout, wide"):
        read_metrics({v: paths.metrics(v) for v in ("baseline", "dropout", "wide")})


def test_confusion_counts_rows_true_columns_predicted():
    cm = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), n_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
