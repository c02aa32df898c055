"""Stage ``train``: tiny real trainings, determinism, divergence, and resuming a killed run."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    BIN,
    ROOT,
    dvc,
    mlflow_client,
    record_reliability,
    repeats,
    run,
    tiny_params,
    trained_figure,
    write_params,
)

from pipeline.adapters.files import load_split, read_history
from pipeline.adapters.paths import Paths
from pipeline.core import callbacks, training
from pipeline.core.config import load_params, resolve_variant
from pipeline.core.errors import ConfigError, DataError, PipelineError
from pipeline.core.inference import predict_proba
from pipeline.stages import train as train_stage

BASELINE = load_params(ROOT / "params.yaml").variant("baseline")


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")  # compile_model sets it globally


@pytest.fixture(scope="module")
def real_small(prepared_cache):
    """2,000 real training images and 1,000 validation images (uint8)."""
    x, y = load_split(prepared_cache / "data" / "prepared" / "train.npz")
    vx, vy = load_split(prepared_cache / "data" / "prepared" / "val.npz")
    return (x[:2000], y[:2000]), (vx[:1000], vy[:1000])


@pytest.fixture(scope="module")
def trained(real_small):
    """The baseline trained for one epoch on 2,000 real images."""
    train_set, val = real_small
    model, history = training.fit(train_set, val, dataclasses.replace(BASELINE, epochs=1), seed=0)
    return model, history


@pytest.mark.slow
def test_tiny_training_beats_chance_by_far(trained, real_small):
    model, history = trained
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 1
    # AMD EPYC 0.682 (the figures on each CPU: docs/development.md)
    assert trained_figure("train: baseline 1 epoch, val accuracy", history["val_accuracy"][0]) > 0.5  # chance is 0.1
    vx, vy = real_small[1]
    assert np.mean(predict_proba(model, vx).argmax(axis=1) == vy) == pytest.approx(history["val_accuracy"][0], abs=1e-3)


@pytest.mark.slow
def test_predictions_do_not_depend_on_the_batch(trained, real_small):
    model, _ = trained
    vx = real_small[1][0][:64]
    together = predict_proba(model, vx, batch_size=64)
    alone = np.concatenate([predict_proba(model, vx[i : i + 1], batch_size=1) for i in range(0, 64, 8)])
    np.testing.assert_allclose(together[::8], alone, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "wide_aug"])  # wide_aug: augmented, bfloat16, one-cycle
def test_training_is_deterministic(real_small, variant):
    (x, y), (vx, vy) = real_small
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").variant(variant), epochs=2, batch_size=64)
    runs = [training.fit((x[:640], y[:640]), (vx[:200], vy[:200]), cfg, seed=5) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1 == h2
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)


@pytest.mark.slow
def test_steps_per_execution_is_a_speed_setting_only(real_small, monkeypatch):
    """Several steps per graph call train exactly as one step per call does: same history, same weights.

    650 images at batch 32 are 21 steps an epoch, so the last call of each epoch runs a partial group.
    """
    (x, y), (vx, vy) = real_small
    cfg = dataclasses.replace(BASELINE, epochs=2, schedule="onecycle")
    assert training.STEPS_PER_EXECUTION > 1
    runs = []
    for steps in (1, training.STEPS_PER_EXECUTION):
        monkeypatch.setattr(training, "STEPS_PER_EXECUTION", steps)
        runs.append(training.fit((x[:650], y[:650]), (vx[:200], vy[:200]), cfg, seed=5))
    (m1, h1), (m2, h2) = runs
    assert h1 == h2
    assert int(m1.optimizer.iterations) == int(m2.optimizer.iterations) == 42
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)


@pytest.mark.slow
def test_saved_outputs_round_trip(tmp_path, trained, real_small):
    model, history = trained
    train_stage._save(Paths(tmp_path), "baseline", model, history, {"variant": "baseline", "params": 257_162})
    tmp_path = tmp_path / "models" / "baseline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "model.keras", "train.json"]  # no temporaries
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and set(header[1:]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    read = read_history(tmp_path / "history.csv")
    assert read.keys() == history.keys()
    assert all(read[k] == pytest.approx(history[k], abs=1e-6) for k in history)
    assert json.loads((tmp_path / "train.json").read_text())["params"] == 257_162
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    vx = real_small[1][0][:32]
    np.testing.assert_allclose(predict_proba(loaded, vx), predict_proba(model, vx), atol=1e-6)


def test_lookahead_moves_the_slow_weights_alpha_of_the_way_and_restarts_the_fast_ones_there():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    look = callbacks.Lookahead(0.5)
    look.set_model(model)
    start = [w.copy() for w in model.get_weights()]
    look.on_train_begin()
    model.set_weights([w + 2.0 for w in start])  # where the optimizer took the fast weights in one compiled call
    look.on_train_batch_end(0)
    for now, before in zip(model.get_weights(), start):
        np.testing.assert_allclose(now, before + 1.0, rtol=1e-6)  # half way
    model.set_weights([w + 4.0 for w in model.get_weights()])
    look.on_train_batch_end(1)
    for now, before in zip(model.get_weights(), start):
        np.testing.assert_allclose(now, before + 3.0, rtol=1e-6)  # from the slow weights (+1), half of +4


@pytest.mark.parametrize(
    ("name", "weight_decay", "cls"), [("adam", 0.0, "Adam"), ("adam", 1e-4, "AdamW"), ("nesterov", 1e-4, "SGD")]
)
def test_the_optimizer_setting_picks_adam_adamw_or_nesterov_sgd(name, weight_decay, cls):
    cfg = dataclasses.replace(BASELINE, optimizer=name, weight_decay=weight_decay, ema=0.99)
    opt = training.optimizer(cfg, steps_per_epoch=10)
    assert type(opt).__name__ == cls and opt.use_ema
    if name == "nesterov":
        assert opt.nesterov and opt.momentum == 0.9 and opt.weight_decay == pytest.approx(1e-4)


@pytest.mark.slow
def test_the_tuning_levers_train_together(real_small):
    """Batch norm at 14x14 and 7x7, a wider head, Nesterov SGD and Lookahead: one epoch on 2,000 images learns.

    At 0.05 with batches of 64 (32 steps) it cleared 0.5 by chance: 0.28 to 0.55 over seeds 0-3 on an AMD EPYC (0.44
    at seed 0 in the suite there, above 0.5 on an Intel Xeon). At 0.01 with batches of 32 (63 steps) every seed learns.
    """
    (x, y), (vx, vy) = real_small
    cfg = dataclasses.replace(
        BASELINE, architecture="wide_bn_cnn", head=256, optimizer="nesterov", learning_rate=0.01, lookahead=0.5, epochs=1,
        batch_size=32, bn_momentum=0.9,  # 0.99 leaves batch norm's moving statistics near their start after 63 steps
    )  # fmt: skip
    model, history = training.fit((x, y), (vx, vy), cfg, seed=0)
    # AMD EPYC 0.776 (seeds 0-5: 0.763-0.780; the figures on each CPU: docs/development.md); chance is 0.1
    assert trained_figure("train: tuning levers, val accuracy", history["val_accuracy"][0]) > 0.5
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [256, 10]


def _epochs_seen() -> tuple[keras.callbacks.Callback, list[int]]:
    seen: list[int] = []
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch)), seen


@pytest.mark.slow
def test_absurd_learning_rate_fails_within_the_first_epoch(real_small):
    (x, y), val = real_small
    callback, epochs_done = _epochs_seen()
    cfg = dataclasses.replace(BASELINE, epochs=3, learning_rate=1e12)
    with pytest.raises(callbacks.TrainingDiverged, match=r"training diverged: loss .* at epoch 1, batch [0-9]+"):
        training.fit((x[:640], y[:640]), val, cfg, seed=0, callbacks=[callback])
    assert epochs_done == []


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), 7.5e11])
def test_divergence_guard_stops_nan_infinite_and_exploded_losses(loss):
    guard = callbacks.TerminateOnDivergence()
    assert isinstance(guard, keras.callbacks.TerminateOnNaN)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 2.3})  # a healthy start
    with pytest.raises(callbacks.TrainingDiverged, match="at epoch 3, batch 1"):
        guard.on_train_batch_end(1, {"loss": loss})
    assert issubclass(callbacks.TrainingDiverged, RuntimeError) and issubclass(callbacks.TrainingDiverged, PipelineError)


def test_make_dataset_scales_batches_and_augments_only_training():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 10, dtype=np.uint8)
    cfg = dataclasses.replace(BASELINE, batch_size=4, augment=dataclasses.replace(BASELINE.augment, shift=2, flip=True))
    images, labels = next(iter(training.make_dataset(x, y, cfg, training=False, seed=0)))
    assert images.shape == (4, 28, 28, 1) and images.dtype == "float32"
    np.testing.assert_allclose(images.numpy()[..., 0], x[:4] / 255.0, atol=1e-6)  # validation: no augmentation
    np.testing.assert_array_equal(labels.numpy(), y[:4])
    batches = list(training.make_dataset(x, y, cfg, training=True, seed=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    augmented = np.concatenate([b[0].numpy() for b in batches])
    assert augmented.shape == (10, 28, 28, 1) and 0.0 <= augmented.min() and augmented.max() <= 1.0


def test_augmentation_is_per_image_and_the_same_for_the_same_seed():
    """One lit pixel per image: each image moves by its own offset of at most `shift`; seeded runs repeat."""
    x = np.zeros((64, 28, 28), np.uint8)
    x[:, 14, 14] = 255
    y = np.arange(64, dtype=np.uint8) % 10
    cfg = dataclasses.replace(BASELINE, batch_size=64, augment=dataclasses.replace(BASELINE.augment, shift=2, flip=False))

    def epochs(seed: int, n: int = 2) -> list[np.ndarray]:
        ds = training.make_dataset(x, y, cfg, training=True, seed=seed)
        return [np.concatenate([b[0].numpy()[..., 0] for b in ds]) for _ in range(n)]

    first = epochs(7)
    for images in first:
        assert np.all(images.reshape(64, -1).max(axis=1) == 1.0)  # the pixel is moved, never lost or scaled
        rows, cols = np.nonzero(images)[1:]
        assert np.all(np.abs(rows - 14) <= 2) and np.all(np.abs(cols - 14) <= 2)
        assert len(set(zip(rows, cols))) > 5  # offsets differ within one batch
    assert not np.array_equal(first[0], first[1])  # and from one epoch to the next
    for a, b in zip(first, epochs(7)):
        np.testing.assert_array_equal(a, b)  # the same seed, the same augmented epochs
    assert not np.array_equal(first[0], epochs(8, 1)[0])


def test_shift_images_matches_a_crop_of_the_padded_image():
    rng = np.random.default_rng(1)
    images = rng.random((8, 28, 28, 1)).astype(np.float32)
    shifted = training.shift_images(tf.constant(images), 1, tf.constant([3, 4], tf.int64)).numpy()
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for image, out in zip(padded, shifted):
        crops = [image[r : r + 28, c : c + 28] for r in range(3) for c in range(3)]
        assert any(np.array_equal(out, crop) for crop in crops)


def test_label_smoothing_loss_matches_the_one_hot_keras_loss():
    logits = np.array([[2.0, 0.5] + [0.0] * 8, [0.0] * 9 + [3.0]], np.float32)
    labels = np.array([0, 9])
    ours = training.SparseSmoothedCrossentropy(0.1)(labels, logits)
    one_hot = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(np.eye(10)[labels], logits)
    assert float(ours) == pytest.approx(float(one_hot), rel=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_learning_rate_schedules_start_and_end_sensibly(schedule):
    cfg = dataclasses.replace(BASELINE, schedule=schedule, learning_rate=0.003, epochs=2)
    lr = training.learning_rate(cfg, steps_per_epoch=10)
    rate = (lambda step: float(lr(step))) if callable(lr) else (lambda step: lr)
    assert max(rate(s) for s in range(21)) == pytest.approx(0.003, rel=1e-3)
    if schedule == "onecycle":
        assert rate(0) == pytest.approx(0.003 / 25, rel=1e-3)
    if schedule != "constant":
        assert rate(20) < 1e-4


def test_resolve_applies_and_checks_command_line_overrides():
    params = load_params(ROOT / "params.yaml")
    cfg = resolve_variant(params, "baseline", epochs=2, limit=100)
    assert (cfg.epochs, cfg.limit) == (2, 100)
    assert resolve_variant(params, "baseline") == params.variant("baseline")
    with pytest.raises(ConfigError, match="--epochs: expected a positive integer, got 0"):
        resolve_variant(params, "baseline", epochs=0)
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        resolve_variant(params, "nope")


# --- the stage, in a temporary project ---------------------------------------------------------
# (A diverging variant run by `dvc repro`: tests/test_pipeline_e2e.py, beside a registered champion.)


def _variant_runs(project: Path, variant: str = "baseline") -> list:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name(tiny_params()["tracking"]["experiment"])
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], f"tags.`fmnist.variant` = '{variant}'")


@pytest.mark.slow
def test_corrupt_prepared_data_in_the_dvc_cache_is_not_trained_on(prepared_project):
    lock = (prepared_project / "dvc.lock").read_text()
    train_npz = prepared_project / "data" / "prepared" / "train.npz"
    cached = next(p for p in (prepared_project / ".dvc" / "cache").rglob("*") if p.is_file() and _same(p, train_npz))
    blob = bytearray(cached.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 16] = bytes(16)  # damage inside the compressed images
    cached.chmod(0o644)
    cached.write_bytes(bytes(blob))
    train_npz.unlink()
    dvc(prepared_project, "checkout", "-q", "prepare")
    assert (prepared_project / "dvc.lock").read_text() == lock
    with pytest.raises(DataError, match="train.npz: corrupt or unreadable prepared data"):
        train_stage.main("baseline", track=False)
    assert not (prepared_project / "models").exists()


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _logged_epochs(db: Path) -> int:
    """The highest training step the MLflow store holds, read without the store's client (0 if none yet)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("select max(step) from metrics where key = 'loss'").fetchone()
    except sqlite3.Error:
        return 0
    return row[0] or 0


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(repeats(1, 10)))
def test_killed_training_resumes_from_its_last_completed_epoch(prepared_project, round_):
    rng, epochs = random.Random(round_), 4
    kill_after, delay = rng.randint(1, epochs - 1), rng.uniform(0, 0.5)  # kill -9 at a random point of a random epoch
    write_params(prepared_project, tiny_params(("baseline",), epochs=epochs))
    cmd = [sys.executable, "-m", "pipeline.stages.train", "baseline"]
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = prepared_project / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=prepared_project, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # generous: CI machines can be busy
        while _logged_epochs(prepared_project / "mlflow.db") < kill_after:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"epoch {kill_after} not done in 300 s"
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, "training finished before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    metadata = list((prepared_project / "checkpoints").glob("baseline-*/training_metadata.json"))
    completed = json.loads(metadata[0].read_text())["epoch"] if metadata else 0
    assert completed < epochs
    [killed] = _variant_runs(prepared_project)
    assert killed.info.status == "RUNNING"  # orphaned by the kill
    assert not (prepared_project / "models" / "baseline" / "model.keras").exists()

    resumed = run(cmd, prepared_project)
    if completed:
        assert f"resuming at epoch {completed + 1}" in resumed.stderr
    rows = (prepared_project / "models" / "baseline" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", *map(str, range(1, epochs + 1))]
    info = json.loads((prepared_project / "models" / "baseline" / "train.json").read_text())
    assert info["epochs_trained"] == epochs and info["mlflow_run_id"] == killed.info.run_id
    client = mlflow_client(prepared_project)
    for key in ("loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(killed.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)  # every epoch once: no duplicates, no gaps
    assert [r.info.status for r in _variant_runs(prepared_project)] == ["FINISHED"]
    assert not list((prepared_project / "checkpoints").glob("baseline-*"))  # cleaned up after success
    record_reliability(
        "training killed with kill -9",
        {"round": round_, "epochs_completed_at_kill": completed},
    )
