"""The prediction log (pipeline/adapters/prediction_log.py): records in batches, sampled images, and a log that can fail,
in files and in the stack's PostgreSQL (pipeline/adapters/prediction_db.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.adapters.prediction_log import PredictionLog, open_store
from pipeline.core.drift import histograms
from pipeline.core.images import PIXEL_COLUMNS
from pipeline.core.predictions import FIELDS


def _answer(n: int, rng: np.random.Generator) -> pd.DataFrame:
    proba = rng.dirichlet(np.ones(10), n)
    index = proba.argmax(axis=1)
    return pd.DataFrame({"class_index": index, "class_name": [f"c{i}" for i in index], "probabilities": proba.tolist()})


@pytest.fixture
def database(postgres):
    """The prediction log's table in a throw-away PostgreSQL (conftest), empty for each test."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("drop table if exists predictions")
    return postgres


def test_every_image_gets_a_record_and_a_sample_keeps_its_pixels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    log = PredictionLog(tmp_path, sample_rate=0.25, seed=1)
    answer = _answer(40, rng)
    log.record("3", x[:30], answer[:30])
    log.record("4", pd.DataFrame(x[30:].reshape(10, -1), columns=PIXEL_COLUMNS), answer[30:].reset_index(drop=True))
    log.close()
    store = open_store(tmp_path)
    records = store.records()
    assert len(records) == 40 and log.written == 40 and log.dropped == 0
    assert [r["version"] for r in records] == ["3"] * 30 + ["4"] * 10
    first = records[0]
    assert list(first) == list(FIELDS)
    assert first["class_index"] == answer["class_index"][0] and first["top_probability"] == pytest.approx(
        max(answer["probabilities"][0])
    )
    assert first["pixel_mean"] == pytest.approx(x[0].mean() / 255, abs=1e-6) and first["pixel_max"] == pytest.approx(
        x[0].max() / 255
    )
    samples = sorted((tmp_path / "images").glob("*.npz"))
    kept = [np.load(p) for p in samples]
    rows = np.concatenate([k["row"] for k in kept])
    assert 0 < len(rows) < 40  # a quarter, give or take
    pixels = np.concatenate([k["x"] for k in kept])
    np.testing.assert_array_equal(pixels, x[rows])  # each sampled image is the one its record describes
    assert {str(k["records"]) for k in kept} == {p.name for p in tmp_path.glob("predictions-*.jsonl")}
    # what the monitor sums: each image's pixel counts in the drift code's bins, and the kept images with their records
    np.testing.assert_array_equal([r["pixel_histogram"] for r in records], histograms(x))
    images, described = store.sampled()
    np.testing.assert_array_equal(images, x[rows])
    assert [r["pixel_mean"] for r in described] == [records[i]["pixel_mean"] for i in rows]
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert open_store(tmp_path).records(since=later) == [] and open_store(tmp_path).sampled(since=later)[1] == []


def test_the_stacks_database_holds_the_records_the_files_hold_to_the_digit(tmp_path, database):
    rng = np.random.default_rng(0)
    x, answer = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), _answer(300, rng)
    for to in (tmp_path, database):  # the same traffic, the same sampling seed, into each store
        log = PredictionLog(to, sample_rate=0.1, seed=1)
        for i in range(0, 300, 50):
            log.record("7", x[i : i + 50], answer[i : i + 50].reset_index(drop=True))
        log.close()
        assert log.written == 300 and log.dropped == 0
    files, table = open_store(tmp_path), open_store(database)

    def untimed(records):  # written a moment apart: all but the time
        return [{k: v for k, v in r.items() if k != "time"} for r in records]

    records = table.records()
    assert untimed(records) == untimed(files.records())
    images, described = table.sampled()
    assert 10 < len(images) < 60 and untimed(described) == untimed(files.sampled()[1])
    np.testing.assert_array_equal(images, files.sampled()[0])
    np.testing.assert_array_equal(histograms(images), [r["pixel_histogram"] for r in described])  # each its own
    middle = records[150]["time"]  # a window's bounds select what they select in the files: by the record's time
    since = datetime.fromisoformat(middle)
    assert table.records(since=since) == [r for r in records if r["time"] >= middle]
    assert table.records(until=since) == [r for r in records if r["time"] <= middle]
    table.close()


def test_a_database_that_cannot_be_reached_loses_records_never_requests(caplog):
    from pipeline.stack.processes import free_port

    rng, dropped = np.random.default_rng(0), []
    log = PredictionLog(f"postgresql://postgres@127.0.0.1:{free_port()}/predictions", 0.5, flush_s=0.05, on_drop=dropped.append)
    with caplog.at_level(logging.WARNING, logger="pipeline.adapters.prediction_log"):
        for _ in range(3):
            log.record("1", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), _answer(4, rng))  # never raises
        log.close()
    assert sum(dropped) == 12 and log.written == 0
    assert [r.getMessage() for r in caplog.records][0].startswith("prediction log: dropped 4 record(s) so far (OperationalError")


def test_a_full_queue_drops_records_counts_them_and_never_holds_more(tmp_path):
    rng, dropped = np.random.default_rng(0), []
    log = PredictionLog(tmp_path, 0.0, max_pending=50, flush_s=3600, on_drop=dropped.append)  # the thread sleeps: it fills
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for _ in range(4):
        log.record("1", x, _answer(20, rng))
    assert dropped == [20, 20] and log.dropped == 40 and log._pending == 40  # two of four fit under 50 images
    log.close()
    assert len(open_store(tmp_path).records()) == 40


def test_a_failing_disk_loses_records_not_requests_and_says_so_once_a_minute(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be\n")
    rng, dropped = np.random.default_rng(0), []
    log = PredictionLog(blocked, 0.0, flush_s=0.05, on_drop=dropped.append)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="pipeline.adapters.prediction_log"):
        for _ in range(3):
            log.record("1", x, _answer(5, rng))  # never raises
        log.record("1", "not images", _answer(5, rng))  # neither does input the log cannot read
        log.close()
    assert sum(dropped) == 20 and log.written == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("prediction log: dropped 5 record(s) so far (")
    assert blocked.read_text() == "a file where the log's folder should be\n"  # nothing written over it
