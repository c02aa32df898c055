"""Several processes at once: MLflow logging to one store (SQLite, and a server on PostgreSQL) and two ``dvc repro``.

The registry's promotion race is in ``test_promote.py``; two retraining flows are in ``test_flows.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tiny_repro
import yaml
from conftest import BIN, dvc, mlflow_client, record_reliability, tiny_params, write_params

WRITERS = 4
EPOCHS = 60
KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

LOG_WORKER = textwrap.dedent(
    """
    # One of several writers: waits for the go file, then logs EPOCHS epochs through the pipeline's EpochLogger.
    import sys, time
    from pathlib import Path
    from pipeline.adapters.mlflow import epochs as epoch_logging, store

    go, name, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    client = store.client()
    try:
        exp = client.create_experiment("concurrency")
    except Exception:  # another writer created it first
        exp = client.get_experiment_by_name("concurrency").experiment_id
    run = client.create_run(exp, run_name=name)
    client.log_param(run.info.run_id, "writer", name)
    logger = epoch_logging.EpochLogger(run.info.run_id)
    while not go.exists():
        time.sleep(0.005)
    for epoch in range(epochs):
        logger.on_epoch_end(epoch, {k: epoch + i / 10 for i, k in enumerate(sys.argv[4].split(","))})
    client.set_terminated(run.info.run_id)
    """
)


def _log_at_once(uri: str, work: Path) -> float:
    """Start WRITERS processes logging to ``uri`` at the same moment; return the seconds they took."""
    go = work / "go"
    env = tiny_repro.project_env(MLFLOW_TRACKING_URI=uri)
    procs = []
    for i in range(WRITERS):
        cmd = [sys.executable, "-c", LOG_WORKER, str(go), f"writer-{i}", str(EPOCHS), ",".join(KEYS)]
        procs.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    time.sleep(8)  # let every writer import TensorFlow and create its run: the logging then overlaps
    start = time.monotonic()
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    return time.monotonic() - start


def _assert_every_metric_arrived(client) -> int:
    exp = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"writer-{i}" for i in range(WRITERS)]
    points = 0
    for run in runs:
        assert run.info.status == "FINISHED"
        for i, key in enumerate(KEYS):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(e + 1, e + i / 10) for e in range(EPOCHS)], (
                run.info.run_name,
                key,
            )
            points += len(history)
    return points


@pytest.mark.slow
def test_four_processes_logging_to_one_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seconds = _log_at_once(uri, tmp_path)
    points = _assert_every_metric_arrived(mlflow_client(tmp_path))
    assert points == WRITERS * EPOCHS * len(KEYS)
    record_reliability("sqlite: 4 writers", {"points": points, "lost": 0, "seconds": round(seconds, 1)})


# --- an MLflow server on PostgreSQL, the way a team runs it --------------------------------------


@pytest.mark.slow
def test_four_processes_logging_to_an_mlflow_server_on_postgresql_lose_nothing(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    seconds = _log_at_once(mlflow_server, tmp_path)
    points = _assert_every_metric_arrived(MlflowClient(tracking_uri=mlflow_server))
    assert points == WRITERS * EPOCHS * len(KEYS)
    record_reliability("mlflow server on PostgreSQL: 4 writers", {"points": points, "lost": 0, "seconds": round(seconds, 1)})


# --- two `dvc repro` at once ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_dvc_repro_fails_fast_and_the_first_finishes_with_a_valid_lock_file(prepared_project):
    write_params(prepared_project, tiny_params(("baseline",), epochs=2))
    env = tiny_repro.project_env()
    with open(prepared_project / "first.log", "w") as out:
        first = subprocess.Popen(
            [str(BIN / "dvc"), "repro"], cwd=prepared_project, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    deadline = time.monotonic() + 120
    while "Running stage 'train@baseline'" not in (prepared_project / "first.log").read_text():
        assert first.poll() is None and time.monotonic() < deadline, (prepared_project / "first.log").read_text()[-3000:]
        time.sleep(0.2)

    started = time.monotonic()
    second = subprocess.run([str(BIN / "dvc"), "repro"], cwd=prepared_project, env=env, capture_output=True, text=True)
    waited = time.monotonic() - started
    assert first.poll() is None, "the first repro should still be training while the second is refused"
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr  # DVC's per-output lock, naming the holder
    assert f"(PID {first.pid})" in second.stderr and "rwlock" in second.stderr
    assert first.wait(300) == 0, (prepared_project / "first.log").read_text()[-3000:]

    lock = yaml.safe_load((prepared_project / "dvc.lock").read_text())
    assert {"download", "prepare", "train@baseline", "evaluate@baseline", "summarize", "register"} <= set(lock["stages"])
    assert "up to date" in dvc(prepared_project, "status").stdout
    record_reliability("two dvc repro at once", {"second_exit": second.returncode, "second_seconds": round(waited, 1)})
