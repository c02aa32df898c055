"""``fmnist monitor``: served traffic, logged by a real ``fmnist serve``, against the champion's training reference.

The store is a copy of the session's tiny repro's (tests/tiny_repro.py); the server logs every image
(``serve.sample_rate: 1``) into the copy's ``data/predictions/``, and the monitoring flow runs under
Prefect's test harness on that copy.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tiny_repro
import yaml
from conftest import fmnist_serve, mlflow_client, trained_figure
from PIL import Image

from pipeline.adapters import open_inference
from pipeline.adapters.files import load_split
from pipeline.adapters.prediction_log import open_store

MODEL = "fashion-mnist-cnn"
SENT = 400


@pytest.fixture(scope="module")
def work(prepared_cache, tmp_path_factory) -> Path:
    """A project folder on a copy of the tiny repro's store, its prepared data, and params that log every image."""
    repro = tiny_repro.reproduced(prepared_cache, tmp_path_factory)
    work = tmp_path_factory.mktemp("monitor")
    shutil.copy(repro / "mlflow.db", work / "mlflow.db")
    (work / "data").mkdir()
    (work / "data" / "prepared").symlink_to(repro / "data" / "prepared")  # read only
    params = yaml.safe_load((repro / "params.yaml").read_text())
    params["serve"] = {"poll_s": 60, "log": True, "sample_rate": 1.0}
    params["monitor"] = {"window_h": 1, "min_images": 100, "export_max": 500}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


@pytest.fixture(scope="module")
def served(work, tmp_path_factory):
    env = tiny_repro.project_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    with fmnist_serve(work, env, tmp_path_factory.mktemp("monitor-serve") / "serve.log") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _send(url: str, work: Path, images: np.ndarray) -> None:
    """Send ``images`` to the server and wait until its log holds their records."""
    before = len(open_store(work / "data" / "predictions").records())
    open_inference.infer(url, MODEL, images)
    deadline = time.monotonic() + 30  # the log writes a second behind, off the request path
    while len(open_store(work / "data" / "predictions").records()) < before + len(images) and time.monotonic() < deadline:
        time.sleep(0.2)


def _monitor(work: Path, monkeypatch, alerts_to: str | None = None) -> dict:
    from pipeline.orchestration import flows

    if alerts_to:
        monkeypatch.setenv("FMNIST_ALERTS_URL", alerts_to)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    return flows.monitoring_flow()


@pytest.mark.slow
def test_the_monitor_passes_test_images_and_finds_drift_in_inverted_ones_logging_each_window_and_exporting_to_label(
    work, served, harness, monkeypatch, alert_receiver
):
    x, _ = load_split(work / "data" / "prepared" / "test.npz")
    _send(served, work, x[:SENT])
    calm = _monitor(work, monkeypatch, alert_receiver.url)
    assert calm["images"] == SENT and calm["versions"] == {"1": SENT} and calm["champion"] == "1"
    assert not calm["drifted"], calm["message"]
    # AMD EPYC: PSI 0.0023, class shift 0.075 (the figures on each CPU: docs/development.md)
    assert trained_figure("monitor: test images, pixel PSI", calm["report"]["pixel_psi"]) < 0.05
    assert trained_figure("monitor: test images, class shift (TVD)", calm["report"]["class_shift"]) < 0.1

    shutil.move(work / "data" / "predictions", work / "data" / "predictions-calm")  # the next window: shifted traffic only
    _send(served, work, 255 - x[SENT : 2 * SENT])
    assert alert_receiver.received == []  # no drift, no alert
    shifted = _monitor(work, monkeypatch)
    assert shifted["images"] == SENT and shifted["drifted"], shifted["message"]
    (alert,) = alert_receiver.wait(1)  # a person hears of it
    assert alert["title"] == f"{MODEL}: served traffic drifted" and alert["message"] == shifted["message"]
    assert any(r.startswith("pixel-intensity PSI") for r in shifted["report"]["reasons"])
    assert shifted["message"].startswith(f"{SENT} images served") and "drift: pixel-intensity PSI" in shifted["message"]

    # every image of a drifted window that the log kept is exported, in the intake's layout, by its predicted class
    exported = sorted(Path(shifted["exported"]).rglob("*.png"))
    assert shifted["n_exported"] == len(exported) == SENT
    names = yaml.safe_load((work / "params.yaml").read_text())["base"]["class_names"]
    assert {p.parent.name for p in exported} <= {n.replace("/", "_") for n in names}
    first = np.asarray(Image.open(exported[0]))
    assert first.shape == (28, 28) and first.dtype == np.uint8
    assert Path(shifted["exported"]).parent == work / "data" / "to-label"

    # each window is a FINISHED run of the monitoring experiment, its figures stamped at the window's end
    client = mlflow_client(work)
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist-monitoring").experiment_id])
    by_id = {r.info.run_id: r for r in runs}
    assert set(by_id) == {calm["mlflow_run_id"], shifted["mlflow_run_id"]}
    drifted = by_id[shifted["mlflow_run_id"]]
    assert drifted.info.status == "FINISHED" and drifted.data.tags["fmnist.drifted"] == "true"
    assert by_id[calm["mlflow_run_id"]].data.tags["fmnist.drifted"] == "false"
    assert drifted.data.metrics["drift.pixel_psi"] == pytest.approx(shifted["report"]["pixel_psi"])
    history = client.get_metric_history(drifted.info.run_id, "drift.pixel_psi")
    assert [m.timestamp // 1000 for m in history] == [int(datetime.fromisoformat(shifted["end"]).timestamp())]
    assert "drift/drift.png" in {a.path for a in client.list_artifacts(drifted.info.run_id, "drift")}


@pytest.mark.slow
def test_a_window_with_too_few_images_is_not_judged(work, served, harness, monkeypatch):
    shutil.rmtree(work / "data" / "predictions", ignore_errors=True)
    x, _ = load_split(work / "data" / "prepared" / "test.npz")
    _send(served, work, x[:20])
    window = _monitor(work, monkeypatch)
    assert window["images"] == 20 and window["report"] is None and not window["drifted"]
    assert "too few to judge (monitor.min_images is 100)" in window["message"]
    assert "mlflow_run_id" not in window
