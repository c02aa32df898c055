"""Prefect flows under ``prefect_test_harness`` with tiny params, and one end-to-end deployment run.

The retraining scenario runs once per module (``retrained``): a prepared project gets real new
images (mirrored training images, which are not duplicates) and five broken files; the
retraining flow accepts, quarantines, retrains one variant on 1,000 images for one epoch and
runs the gate. The other tests look at what it left, or run the flow again (nothing new). The
end-to-end test starts a real ``prefect server``, a process worker, deploys ``prefect.yaml``
and waits for a triggered run to complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from conftest import (
    BIN,
    ROOT,
    dvc,
    free_port,
    make_project,
    no_clients,
    run,
    tiny_params,
    trained_figure,
    wait_for_url,
    write_params,
)
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from pipeline import cli
from pipeline.adapters import dvc as dvc_adapter
from pipeline.adapters import locks
from pipeline.adapters.files import load_split
from pipeline.adapters.paths import Paths
from pipeline.core import images, retraining
from pipeline.core.config import parse_params
from pipeline.core.drift import DriftReport
from pipeline.core.environment import without_clients
from pipeline.core.errors import ConfigError
from pipeline.orchestration import automations, flows, tasks
from pipeline.services import intake

fmnist = cli.main

NEW_IMAGES = 200  # 150 as PNG files in class folders, 50 in one .npz
BROKEN = {
    "Coat/truncated.png": "not a decodable image",
    "Bag/large.png": "image is 32x32",
    "Hat/hat.png": "unknown class folder 'Hat'",
    "Trouser/copy.png": "already in the training split",
    "labels.npz": "label 11 out of range",
}


def _params(**retrain_cfg) -> dict:
    params = tiny_params(("baseline",), epochs=1, limit=1000)
    params["retrain"] = {"retries": 1, "retry_delay": 1} | retrain_cfg
    return params


def _env(mp: pytest.MonkeyPatch, repo: Path) -> None:
    mp.chdir(repo)
    no_clients(mp)
    mp.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")


def _new_data(paths: Paths, class_names: tuple[str, ...]) -> int:
    """Mirrored training images (real, labelled, not duplicates) plus five broken files; returns the good count."""
    x, y = load_split(paths.prepared / "train.npz")
    mirrored = x[:, :, ::-1]
    known = intake.known_hashes(paths)
    fresh = [i for i, h in enumerate(images.image_hashes(mirrored)) if h not in known][:NEW_IMAGES]
    for i in fresh[:150]:
        folder = paths.incoming / images.folder_name(class_names[y[i]])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mirrored[i]).save(folder / f"new-{i}.png")
    np.savez(paths.incoming / "more.npz", x=mirrored[fresh[150:]], y=y[fresh[150:]])
    (paths.incoming / "Coat" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(paths.incoming / "Bag" / "large.png")
    (paths.incoming / "Hat").mkdir()
    Image.fromarray(mirrored[fresh[-1]][::-1]).save(paths.incoming / "Hat" / "hat.png")
    Image.fromarray(x[3]).save(paths.incoming / "Trouser" / "copy.png")
    np.savez(paths.incoming / "labels.npz", x=mirrored[fresh[-2:]] // 2, y=np.array([1, 11]))
    return len(fresh)


def _checkout_prepared(repo: Path, cache: Path) -> None:
    """The ``download`` and ``prepare`` results of the session's prepared project, by ``dvc checkout``."""
    import shutil

    shutil.copytree(cache / ".dvc" / "cache", repo / ".dvc" / "cache", dirs_exist_ok=True)
    shutil.copy(cache / "dvc.lock", repo / "dvc.lock")
    dvc(repo, "checkout", "-q", "download", "prepare")
    shutil.copytree(cache / "reports", repo / "reports", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory, prepared_cache: Path, harness) -> types.SimpleNamespace:
    """One retraining run with new data and broken files (fan-out on), and what it left behind."""
    repo = make_project(tmp_path_factory.mktemp("retrained") / "repo", _params(fan_out=True))
    _checkout_prepared(repo, prepared_cache)
    paths = Paths(repo)
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, repo)
        params = parse_params(yaml.safe_load((repo / "params.yaml").read_text()))
        good = _new_data(paths, params.base.class_names)
        before = dvc_adapter.data_versions(repo / "dvc.lock")
        start = time.perf_counter()
        state = flows.retraining_flow(return_state=True)
        seconds = time.perf_counter() - start
    return types.SimpleNamespace(repo=repo, paths=paths, state=state, good=good, before=before, seconds=seconds)


def _artifact(key: str, flow_run_id=None):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [a for a in found if flow_run_id is None or a.flow_run_id == flow_run_id]


def _mlflow_runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_retraining_accepts_quarantines_retrains_and_gates(retrained):
    assert retrained.state.is_completed(), retrained.state.message
    result = retrained.state.result()
    assert result["retrained"] and result["message"].startswith(f"retrained ({retrained.good} new images accepted")
    assert result["intake"]["accepted_images"] == retrained.good == NEW_IMAGES
    assert set(result["intake"]["rejected"]) == set(BROKEN)
    quarantine = retrained.paths.quarantine / result["intake"]["stamp"]
    for rel, reason in BROKEN.items():
        assert reason in result["intake"]["rejected"][rel]
        assert (quarantine / rel).exists() and reason in (quarantine / f"{rel}.reason.txt").read_text()
    assert intake.pending(retrained.paths.incoming) == []

    after = dvc_adapter.data_versions(retrained.repo / "dvc.lock")  # a new data version, recorded by DVC
    assert after["data/accepted"] != retrained.before["data/accepted"]
    assert after["data/prepared"] != retrained.before["data/prepared"]
    assert json.loads((retrained.repo / "reports" / "data.json").read_text())["counts"]["val"]["total"] == 5000
    assert dvc(retrained.repo, "status", "--json").stdout.strip() in ("{}", "")

    promotion = json.loads((retrained.repo / "reports" / "promotion.json").read_text())
    assert promotion["decision"] == "promoted" and promotion == result["promotion"]

    flow_run_id = retrained.state.state_details.flow_run_id
    report = _artifact("retraining-report", flow_run_id)[0].data
    assert "Quarantined 5 files" in report and "pixel-intensity PSI" in report and "**promoted**" in report
    assert "no champion yet" in report  # the first model: no class shift to measure
    assert "## Promotion decision" in _artifact("training-summary")[0].data
    table = json.loads(_artifact("winner-confusion-matrix")[0].data)
    assert len(table) == 10 and sum(sum(v for k, v in row.items() if k != "true/predicted") for row in table) == 10_000

    runs = {r.info.run_name: r for r in _mlflow_runs(retrained.repo)}
    parent = next(r for name, r in runs.items() if name.startswith("retraining-"))
    assert runs["baseline"].data.tags["mlflow.parentRunId"] == parent.info.run_id  # grouped under the flow's run
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == str(flow_run_id)
    assert parent.data.metrics["drift.n_new"] == NEW_IMAGES
    # AMD EPYC 0.0014 (the figures on each CPU: docs/development.md)
    assert trained_figure("flows: new images, pixel PSI", parent.data.metrics["drift.pixel_psi"]) < 0.2
    assert parent.data.tags["fmnist.decision"].endswith("promoted")

    # the report links to the new version's card, which names the flow run and the accepted batch
    from mlflow.tracking import MlflowClient

    version = promotion["challenger_version"]
    assert f"(http://127.0.0.1:5000/#/models/{promotion['model_name']}/versions/{version})" in report
    card = MlflowClient(tracking_uri=f"sqlite:///{retrained.repo / 'mlflow.db'}").get_model_version(
        promotion["model_name"], version
    )
    lineage = json.loads(card.tags["fmnist.lineage"])
    assert lineage["prefect_flow_run_id"] == str(flow_run_id) and lineage["parent_run_id"] == parent.info.run_id
    assert sum(lineage["accepted_batches"].values()) == NEW_IMAGES
    assert f"(of which {NEW_IMAGES:,} accepted new images)" in card.description


@pytest.mark.slow
def test_stages_ran_as_named_tasks(retrained):
    with get_client(sync_client=True) as client:
        names = {t.name for t in client.read_task_runs()}
    expected = {
        "intake",
        "drift",
        "status",
        "download",
        "prepare",
        "train@baseline",
        "evaluate@baseline",
        "summarize",
        "register",
    }
    assert expected <= names


@pytest.mark.slow
def test_run_with_nothing_new_ends_early(retrained, monkeypatch):
    _env(monkeypatch, retrained.repo)
    lock_before, runs_before = (retrained.repo / "dvc.lock").read_text(), len(_mlflow_runs(retrained.repo))
    state = flows.retraining_flow(return_state=True)
    assert state.is_completed()
    result = state.result()
    assert not result["retrained"] and result["message"].startswith("nothing new")
    assert (retrained.repo / "dvc.lock").read_text() == lock_before
    assert len(_mlflow_runs(retrained.repo)) == runs_before  # no training, no new runs
    assert "No training ran" in _artifact("retraining-report", state.state_details.flow_run_id)[0].data


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.adapters.locks import exclusive
with exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_second_retraining_is_cancelled_and_a_crashed_holder_blocks_nothing(retrained, monkeypatch):
    _env(monkeypatch, retrained.repo)
    lock = retrained.paths.retrain_lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = flows.retraining_flow(force=True, return_state=True)
        assert state.is_cancelled()
        assert f"another retraining is running (pid {holder.pid}" in state.message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        holder.wait()
    with locks.exclusive(lock, wait=False):  # the kernel released the dead holder's lock
        pass


def test_training_flow_does_not_retry_a_user_error(project, harness, monkeypatch):
    params = _params(retries=2, retry_delay=0)
    params["data"]["mirrors"] = [str(project / "no-such-mirror")]
    write_params(project, params)
    state = flows.training_flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no mirror has a good copy"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    download = next(t for t in runs if t.name == "download")
    assert download.run_count == 1 and download.state.is_failed()  # exit 2: not retried
    assert [r.info.status for r in _mlflow_runs(project)] == ["FAILED"]  # the flow closed its parent run


def test_fmnist_flow_names_a_user_error_and_exits_2(project, harness, capsys):
    params = _params()
    params["data"]["mirrors"] = [str(project / "no-such-mirror")]
    write_params(project, params)
    with pytest.raises(SystemExit) as exited:
        fmnist(["flow"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: download:" in err and "no mirror has a good copy" in err
    assert not (project / "data" / "raw").exists() or not any((project / "data" / "raw").iterdir())  # nothing half-written


def test_the_flow_commands_give_prefects_temporary_server_90_s_to_start_unless_the_user_set_a_time(monkeypatch):
    from prefect.settings import Settings

    from pipeline.orchestration import commands

    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.setenv(name, "1")  # recorded, so that the test leaves the environment as it found it
    monkeypatch.delenv(name)
    assert Settings().server.ephemeral.startup_timeout_seconds == 20  # Prefect's own: too short on a busy 2-core machine
    commands._flows()
    assert Settings().server.ephemeral.startup_timeout_seconds == 90
    monkeypatch.setenv(name, "300")
    commands._flows()
    assert Settings().server.ephemeral.startup_timeout_seconds == 300


def test_prefect_server_telemetry_is_off_from_the_repository_root():
    """``[tool.prefect.server]`` in pyproject.toml: applies to every command run from the root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    probe = "from prefect.settings import get_current_settings as s; print(s().server.analytics_enabled)"
    at_root = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert at_root.stdout.strip() == "False"


@flow
def _download_only(retries: int):
    return tasks.STAGES["download"].with_options(retries=retries, retry_delay_seconds=1)("download", {})


def _repro_running() -> bool:
    for child in psutil.Process().children(recursive=True):
        try:
            if "repro" in child.cmdline():
                return True
        except psutil.Error:  # exited meanwhile
            pass
    return False


def _release_after_first_attempt(lock) -> None:
    """Release DVC's lock once the first ``dvc repro`` has given up on it."""
    seen = False
    for _ in range(600):
        alive = _repro_running()
        if seen and not alive:
            break
        seen |= alive
        time.sleep(0.05)
    lock.close()


def test_a_stage_is_retried_while_dvc_is_locked_by_another_process(project, harness):
    import zc.lockfile

    (project / ".dvc" / "tmp").mkdir(exist_ok=True)
    lock = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))  # what a running `dvc` holds
    threading.Thread(target=_release_after_first_attempt, args=(lock,), daemon=True).start()
    state = _download_only(retries=2, return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert [t.run_count for t in runs] == [2]  # failed once on the lock, then succeeded
    assert (project / "data" / "raw" / "train-images-idx3-ubyte.gz").exists()


def test_plan_says_why():
    report = DriftReport(5, 0.5, 0.2, None, None, 0.1, (1.0,), (1.0,))
    assert retraining.plan(0, None, [], False) == retraining.Plan(
        False, ("nothing new: no new images accepted and the pipeline is up to date",)
    )
    assert retraining.plan(5, report, [], False).reasons == ("5 new images accepted", "pixel-intensity PSI 0.500 > 0.2")
    assert retraining.plan(0, None, ["train@baseline"], True).reasons == (
        "pipeline out of date (dvc status: train@baseline)",
        "forced (--force)",
    )


def test_retrain_params_are_checked():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert parse_params(raw).retrain.cron == raw["retrain"]["cron"]
    for bad, message in (
        ({"cron": "daily"}, "retrain.cron: expected a cron expression"),
        ({"psi": 1}, "retrain.psi: unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_params(raw | {"retrain": bad})


def test_prefect_yaml_declares_the_deployment_that_schedule_serves_and_the_monitors():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment, monitoring = spec["deployments"]
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert monitoring["entrypoint"] == "pipeline/orchestration/flows.py:monitoring_flow"
    assert monitoring["schedules"] == [{"cron": params.monitor.cron, "timezone": "UTC", "active": True}]
    assert deployment["name"] == flows.DEPLOYMENT
    assert deployment["entrypoint"] == "pipeline/orchestration/flows.py:retraining_flow"
    assert deployment["schedules"] == [{"cron": params.retrain.cron, "timezone": "UTC", "active": True}]
    assert deployment["concurrency_limit"]["limit"] == 1
    (trigger,) = deployment["triggers"]
    assert trigger["expect"] == [flows.DRIFT_EVENT] and trigger["parameters"] == {"force": False}
    assert set(deployment["parameters"]) <= set(flows.retraining_flow.parameters.properties)


@pytest.mark.slow
def test_deployment_from_prefect_yaml_runs_on_a_real_server_and_process_worker(retrained, tmp_path, alert_receiver):
    """On a real server: `fmnist schedule` serves the deployment; `prefect deploy` declares it with its drift trigger; the
    server's automations alert, through the stack's relay, on a late run and a failed one; the drift event starts a
    retraining run that a process worker completes (nothing new)."""
    repo, port, relay_port = retrained.repo, free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    inherited = without_clients(os.environ)
    full_env = inherited | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | env
    procs: list[subprocess.Popen] = []

    def start(name: str, *cmd: str, **extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            cmd, cwd=repo, env=full_env | extra, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc, log

    def alert(words: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [a for a in alert_receiver.received if words in a.get("title", "")]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no alert with {words!r}: {alert_receiver.received}")

    def api_call(path: str, body: dict | None = None, method: str = "POST"):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{api}/{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        answer = urllib.request.urlopen(request, timeout=30).read()
        return json.loads(answer) if answer else None

    try:
        server, server_log = start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port))
        relay, relay_log = start("relay", sys.executable, "-m", "pipeline.stack.relay", "--port", str(relay_port),
                                 FMNIST_ALERTS_URL=alert_receiver.url)  # fmt: skip
        wait_for_url(f"{api}/health", 120, server, server_log)
        wait_for_url(f"http://127.0.0.1:{relay_port}/health", 30, relay, relay_log)
        installed = run(
            [sys.executable, "-m", "pipeline.orchestration.automations", f"http://127.0.0.1:{relay_port}"], repo, env=env
        )
        assert installed.stdout.split("\n")[:2] == list(automations.AUTOMATIONS)

        serve, serve_log = start("schedule", sys.executable, "-m", "pipeline", "schedule")  # `fmnist schedule`
        for _ in range(60):
            inspect = run([str(BIN / "prefect"), "deployment", "inspect", "retraining/retraining"], repo, check=False, env=env)
            if inspect.returncode == 0:
                break
            assert serve.poll() is None, serve_log.read_text()[-3000:]
            time.sleep(1)
        assert "0 3 * * 1" in inspect.stdout and "'timezone': 'UTC'" in inspect.stdout, inspect.stdout
        # SIGTERM, as a service manager stops it: a suite started in the background from a
        # non-interactive shell (as CI may) passes SIGINT down ignored, and Ctrl-C would never arrive.
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)

        run([str(BIN / "prefect"), "work-pool", "create", "fmnist-process", "--type", "process"], repo, env=env)
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "retraining"], repo, env=env)
        deployment = api_call("deployments/name/retraining/retraining", method="GET")

        # a run due a minute ago, with no worker yet: the server marks it Late and its automation alerts
        due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        late = api_call(f"deployments/{deployment['id']}/create_flow_run",
                        {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}}})  # fmt: skip
        late_alert = alert("is late")
        assert late["name"] in late_alert["title"] and "is a worker polling its pool?" in late_alert["message"]
        api_call(f"flow_runs/{late['id']}", method="DELETE")

        doomed = (
            "from prefect import flow\n@flow(name='doomed')\ndef doomed():\n    raise RuntimeError('meant to fail')\ndoomed()"
        )
        assert run([sys.executable, "-c", doomed], repo, check=False, env=env).returncode != 0
        failed = alert("doomed/")
        assert failed["title"].endswith("Failed") and "meant to fail" in failed["message"]

        worker, worker_log = start("worker", str(BIN / "prefect"), "worker", "start", "--pool", "fmnist-process")
        resource = f"fmnist.model.{parse_params(yaml.safe_load((repo / 'params.yaml').read_text())).registry.model_name}"
        run([str(BIN / "prefect"), "event", "emit", flows.DRIFT_EVENT, "--resource-id", resource], repo, env=env)
        runs, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline and not (runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED")):
            found = api_call("flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
            runs = [r for r in found if not r["auto_scheduled"]]  # not the schedule's next runs
            time.sleep(1)
        assert [r["state_type"] for r in runs] == ["COMPLETED"], worker_log.read_text()[-5000:]  # the trigger's one run
        artifact = run([str(BIN / "prefect"), "artifact", "inspect", "retraining-report"], repo, env=env)
        assert "nothing to do" in artifact.stdout
        assert "nothing new" in worker_log.read_text()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
