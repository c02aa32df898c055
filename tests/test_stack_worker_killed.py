"""A worker SIGKILLed mid-variant while the MLflow server restarts: the flow retries the variant on the other worker.

On a new stack of its own (tests/stack_fixtures.py), so that it runs beside the other stack tests
(tests/test_stack.py) on another pytest-xdist worker.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, write_params
from stack_fixtures import (
    POOL,
    VARIANTS,
    _env,
    _epochs_logged,
    _kill_tree,
    _mlflow,
    _on_workers,
    _params,
    _training,
)

from benchmarks.sandbox import commit
from pipeline import stack


@pytest.fixture(scope="module")
def project(stack_project):
    """The stack's project (tests/stack_fixtures.py), here in place of the conftest's function-scoped one."""
    return stack_project


@pytest.mark.slow
def test_a_worker_killed_mid_variant_and_an_mlflow_restart_lose_nothing(up, project, alert_receiver):
    epochs = 3
    write_params(project, _params(epochs=epochs))
    commit(project, "longer training")
    root, client = Path(up[1]["root"]), _mlflow(up)
    flow = subprocess.Popen(
        [str(BIN / "fmnist"), "flow", "--workers", POOL],
        cwd=project,
        env=_env(up),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        parent, victim, deadline = None, None, time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and flow.poll() is None:
            time.sleep(1)
            experiment = client.get_experiment_by_name("fashion-mnist")  # none until the flow opens its run: a new stack
            running = "tags.`fmnist.role` = 'pipeline' and attributes.status = 'RUNNING'"
            pipelines = client.search_runs([experiment.experiment_id], running) if experiment else []
            parent = next((r.info.run_id for r in pipelines), None)
            for worker in up[1]["workers"]:
                training = _training(worker["pid"])
                if training and _epochs_logged(client, parent, training) >= 1:
                    victim = (worker, training)
        assert victim, "no variant reached its first epoch on a worker"
        worker, killed_variant = victim
        _kill_tree(worker["pid"])  # the worker's machine dies mid-variant
        stack.stop(root, "mlflow")  # and the MLflow server restarts while the other worker trains
        time.sleep(3)
        stack.start_server(root, "mlflow")
        out, _ = flow.communicate(timeout=600)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert flow.returncode == 0, out[-6000:]
    assert "crashed" in out and "starting it again" in out
    done = {r["variant"]: r for r in _on_workers(up)}
    survivor = next(w for w in up[1]["workers"] if w is not worker)
    assert done[killed_variant]["attempts"] == 2 and done[killed_variant]["worker"] == Path(survivor["log"]).stem
    exp = client.get_experiment_by_name("fashion-mnist").experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert not [r for r in runs if r.info.status == "RUNNING"]  # no run left RUNNING
    for variant in VARIANTS:
        mine = [r for r in runs if r.data.tags.get("fmnist.variant") == variant]
        finished = [r for r in mine if r.info.status == "FINISHED"]
        assert len(finished) == 1, [(r.info.run_id, r.info.status) for r in mine]
        for key in ("loss", "val_accuracy"):  # every epoch once: none lost to the restart, none twice after the kill
            steps = sorted(m.step for m in client.get_metric_history(finished[0].info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (variant, key, steps)
    assert [r.info.status for r in runs if r.data.tags.get("fmnist.variant") == killed_variant].count("FAILED") == 1
    # the Prefect server's automation alerts on the crashed run, through the stack's relay: the dead worker could not
    crashed = [a for a in alert_receiver.received if a["title"].startswith("flow run variant/") and "Crashed" in a["title"]]
    assert crashed and "its worker died" in crashed[0]["message"], alert_receiver.received
