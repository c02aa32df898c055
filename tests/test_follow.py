"""A server that follows the champion (pipeline/adapters/mlflow/follow.py, server.py), its metrics and their alert rules.

The registry is a copy of the session's tiny repro's store (tests/tiny_repro.py) with three
versions of one model: 1 (the champion), 2 (the same files, registered again) and 3 (a copy of
them whose Keras file was corrupted). The copy holds only the database: the versions' files are
read where the repro keeps them, and never written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tiny_repro
import yaml
from conftest import ROOT, fmnist_serve, free_port, mlflow_client, wait_for_url

from benchmarks.common import global_tracking_uri
from benchmarks.traffic import Stream, scratch_registry
from pipeline.adapters.files import load_split
from pipeline.adapters.prediction_log import open_store

MODEL = "fashion-mnist-cnn"
POLL_S = 1.0
NAMES = tuple(yaml.safe_load((ROOT / "params.yaml").read_text())["base"]["class_names"])
needs_prometheus = pytest.mark.skipif(
    not shutil.which("prometheus"), reason="Prometheus is not installed: apt-get install -y prometheus (CI installs it)"
)


@pytest.fixture(scope="module")
def registry(prepared_cache, tmp_path_factory) -> Path:
    """A folder with ``mlflow.db`` (versions 1, 2 and a corrupted 3) and a ``params.yaml`` whose ``serve.poll_s`` is 1."""
    repro = tiny_repro.reproduced(prepared_cache, tmp_path_factory)
    work = tmp_path_factory.mktemp("follow")
    _, two = scratch_registry(repro / "mlflow.db", work, MODEL, "1")
    assert two == "2"
    params = yaml.safe_load((repro / "params.yaml").read_text())
    params["serve"] = {"poll_s": POLL_S}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with global_tracking_uri(f"sqlite:///{work / 'mlflow.db'}"):  # MLflow resolves a models:/ source on the global store
        client = mlflow_client(work)
        one = client.get_model_version(MODEL, "1")
        copy = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(work / "corrupted")))
        keras_file = next(copy.rglob("*.keras"))
        data = bytearray(keras_file.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: the file no longer matches the version's model_sha256
        keras_file.write_bytes(bytes(data))
        client.create_model_version(MODEL, str(copy), run_id=one.run_id, tags=one.tags)
    return work


def _move(work: Path, version: str) -> None:
    mlflow_client(work).set_registered_model_alias(MODEL, "champion", version)


@pytest.fixture(scope="module")
def served(registry, tmp_path_factory, alert_receiver):
    """``fmnist serve`` in the registry's folder (following @champion, every second, alerting the receiver), on a free port."""
    log = tmp_path_factory.mktemp("follow-log") / "serve.log"
    env = tiny_repro.project_env(MLFLOW_TRACKING_URI=f"sqlite:///{registry / 'mlflow.db'}", FMNIST_ALERTS_URL=alert_receiver.url)
    with fmnist_serve(registry, env, log) as port:
        yield port, log


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return resp.read().decode()


def _metric(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a /metrics page."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _metric_exact(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_the_server_follows_the_champion_through_a_promotion_and_a_rollback_and_refuses_a_corrupted_version(
    served, registry, prepared_cache, alert_receiver
):
    port, log = served
    image = load_split(prepared_cache / "data" / "prepared" / "test.npz")[0][0]
    stream = Stream(port, json.dumps({"inputs": [image.tolist()]}).encode())
    stream.start()
    try:
        stream.wait_for("1", 0, 30)
        moved = time.monotonic()
        _move(registry, "2")  # promoted
        to_two = stream.wait_for("2", moved, POLL_S + 60)
        moved = time.monotonic()
        _move(registry, "1")  # rolled back
        to_one = stream.wait_for("1", moved, POLL_S + 60)
        _move(registry, "3")  # a version whose model file was corrupted
        deadline = time.monotonic() + 60
        while "version 3" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3 * POLL_S)
    finally:
        stream.stop()
        _move(registry, "1")
    statuses = {a.status for a in stream.answers}
    assert statuses == {200}, [a for a in stream.answers if a.status != 200][:5]
    versions = [a.version for a in stream.answers]
    changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert changes == ["1", "2", "1"], changes  # never version 3: refused, and version 1 kept serving
    assert to_two < POLL_S + 30 and to_one < POLL_S + 30  # each swap within a poll and the load (logged below)
    text = log.read_text()
    assert re.search(r"version 3 \(now @champion\) refused, still serving version 1: .*hash does not match", text), text[-3000:]
    page = _get(port, "/metrics")
    assert _metric(page, "fmnist_serve_swaps_total") == 2
    assert _metric(page, "fmnist_serve_failed_loads_total") == 1
    (alert,) = alert_receiver.wait(1)  # the refused swap reaches a person
    assert alert["title"] == f"{MODEL}: version 3 refused by fmnist serve" and alert["type"] == "failure"
    assert "hash does not match" in alert["message"] and alert["message"].endswith("Still serving version 1.")
    assert json.loads(_get(port, "/model"))["version"] == "1"
    records, deadline = [], time.monotonic() + 30  # the prediction log writes a second behind, off the request path
    while len(records) < len(versions) and time.monotonic() < deadline:
        time.sleep(0.5)
        records = open_store(registry / "data" / "predictions").records()
    assert len(records) == len(versions) and {r["version"] for r in records} == {"1", "2"}
    assert [r["version"] for r in records].count("2") == versions.count("2")  # each record names its version
    assert _metric(page, "fmnist_serve_log_dropped_total") == 0
    print(f"swap to 2 answered after {to_two:.2f} s, back to 1 after {to_one:.2f} s; {len(versions)} requests")


@pytest.mark.slow
def test_metrics_count_requests_images_classes_and_the_served_version(served, prepared_cache):
    port, _ = served
    before = _get(port, "/metrics")
    x = load_split(prepared_cache / "data" / "prepared" / "test.npz")[0][:50]
    body = json.dumps({"inputs": x.tolist()}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        predictions = json.loads(resp.read())["predictions"]
        assert resp.headers["X-Model-Version"] == "1"
    bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b'{"inputs": [[1, 2]]}', headers={"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=60)
    assert refused.value.code == 400 and refused.value.headers["X-Model-Version"] == "1"
    after = _get(port, "/metrics")
    value = lambda text, name: _metric_exact(text, name) if "{" in name else _metric(text, name)  # noqa: E731
    grew = {name: value(after, name) - value(before, name) for name in (
        'fmnist_serve_requests_total{format="tensor",status="200"}', 'fmnist_serve_requests_total{format="tensor",status="400"}',
        "fmnist_serve_images_total", "fmnist_serve_predictions_total", "fmnist_serve_top_probability_count",
    )}  # fmt: skip
    assert grew == {
        'fmnist_serve_requests_total{format="tensor",status="200"}': 1,
        'fmnist_serve_requests_total{format="tensor",status="400"}': 1,
        "fmnist_serve_images_total": 50, "fmnist_serve_predictions_total": 50, "fmnist_serve_top_probability_count": 50,
    }  # fmt: skip
    top = [max(p["probabilities"]) for p in predictions]
    mean = (_metric(after, "fmnist_serve_top_probability_sum") - _metric(before, "fmnist_serve_top_probability_sum")) / 50
    assert mean == pytest.approx(np.mean(top), abs=1e-6)
    for name in {p["class_name"] for p in predictions}:
        count = sum(p["class_name"] == name for p in predictions)
        sample = f'fmnist_serve_predictions_total{{class_name="{name}",version="1"}}'  # labels sorted
        assert _metric_exact(after, sample) - _metric_exact(before, sample) == count, sample
    assert re.search(r'^fmnist_serve_model_info\{.*version="1".*\} 1\.0$', after, re.MULTILINE)
    assert 'fmnist_serve_request_seconds_bucket{format="tensor",le="0.05"}' in after
    assert _metric(after, "fmnist_serve_registry_reachable") == 1


@needs_prometheus
@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_server_and_answers_its_request_count(served, tmp_path):
    port, _ = served
    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "rule_files": [str(ROOT / "monitoring" / "alerts.yml")],
        "scrape_configs": [{"job_name": "fmnist-serve", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
           f"--web.listen-address=127.0.0.1:{prom_port}"]  # fmt: skip
    log = tmp_path / "prometheus.log"
    with open(log, "w") as out:
        prom = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_url(f"http://127.0.0.1:{prom_port}/-/ready", 60, prom, log)
        served_count = _metric(_get(port, "/metrics"), "fmnist_serve_requests_total")
        query = urllib.parse.quote("sum(fmnist_serve_requests_total)")
        seen, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline:
            result = json.loads(_get(prom_port, f"/api/v1/query?query={query}"))["data"]["result"]
            seen = float(result[0]["value"][1]) if result else None
            if seen is not None and seen >= served_count:
                break
            time.sleep(0.5)
        assert served_count > 0 and seen == served_count, (seen, served_count, log.read_text()[-2000:])
        rules = json.loads(_get(prom_port, "/api/v1/rules"))["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} >= {"FmnistServeErrorRate", "FmnistServeSwapFailed"}
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(30)


@needs_prometheus
def test_the_alert_rules_pass_promtool():
    proc = subprocess.run(["promtool", "check", "rules", str(ROOT / "monitoring" / "alerts.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_a_version_that_cannot_answer_its_input_example_is_refused():
    import pandas as pd

    from pipeline.adapters.mlflow.follow import check
    from pipeline.core.errors import RegistryError

    class Wrong:
        def predict(self, x):
            return pd.DataFrame({"class_index": [0], "class_name": ["Not a class"], "probabilities": [[0.1] * 10]})

    class Broken:
        def predict(self, x):
            raise ValueError("no weights")

    with pytest.raises(RegistryError, match="not ten probabilities and a class name"):
        check(Wrong(), NAMES)
    with pytest.raises(RegistryError, match=r"does not answer its input example \(ValueError: no weights\)"):
        check(Broken(), NAMES)


def test_an_unreachable_registry_keeps_the_version_served_and_says_so_once(monkeypatch, caplog):
    from pipeline.adapters.mlflow.follow import Follower, Holder, Served

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    holder, events = Holder(Served(object(), MODEL, "4", "champion", "run")), []
    follower = Follower(holder, "champion", POLL_S, NAMES, lambda *e: events.append(e))
    with global_tracking_uri(), caplog.at_level("ERROR", logger="pipeline.adapters.mlflow.follow"):  # polling sets it
        follower.poll()
        follower.poll()
    assert holder.current.version == "4"
    assert events == [("registry", False)]  # a change is reported once, not every poll
    assert [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()][0].endswith("still serving version 4")
    assert len([r for r in caplog.records if "did not answer" in r.getMessage()]) == 1
