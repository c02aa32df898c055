"""The long fault drills of the team stack, on a stack of their own (tests/stack_fixtures.py); `make test-drills` runs them,
CI after `make test`, and `make reliability` with the rest of the stack tests.

In order, on one stack: a worker SIGKILLed mid-trial of a study, whose trial the other worker runs again; a worker
SIGKILLed mid-variant while the MLflow server restarts, whose variant the flow retries on the other worker (its flow
leaves a champion); the stack down and up again, which keeps the registry, the history and the DVC remote; the S3
endpoint down while a model is logged; every process SIGKILLed, after which `up` recovers and reports what was lost.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, run, write_params
from stack_fixtures import (
    POOL,
    VARIANTS,
    _champion_accuracy,
    _env,
    _epochs_logged,
    _fmnist_stack,
    _kill_tree,
    _mlflow,
    _on_workers,
    _params,
    _training,
)

from benchmarks.sandbox import commit
from pipeline import stack
from pipeline.core.environment import TUNE_STORAGE

pytestmark = [pytest.mark.slow, pytest.mark.drill]  # `make test-drills`: beside `make test` in CI, not inside it

STUDY = {"variant": "baseline", "trials": 4, "pruner": "none", "seed": 5,
         "space": {"learning_rate": {"log": [0.0005, 0.005]}, "dropout": {"uniform": [0.0, 0.3]}}}  # fmt: skip


@pytest.fixture(scope="module")
def project(stack_project):
    """The stack's project (tests/stack_fixtures.py), here in place of the conftest's function-scoped one."""
    return stack_project


def _trial_runs(client, state: str | None = None) -> list:
    experiment = client.get_experiment_by_name("fashion-mnist-tuning")  # none until the study opens its run
    where = "tags.`fmnist.role` = 'trial'" + (f" and attributes.status = '{state}'" if state else "")
    return client.search_runs([experiment.experiment_id], where) if experiment else []


def test_a_study_runs_on_both_workers_and_the_trial_of_one_killed_mid_trial_runs_again_on_the_other(up, project):
    import optuna

    write_params(project, _params() | {"tune": {"quick": STUDY}})
    commit(project, "a study")
    root, client = Path(up[1]["root"]), _mlflow(up)
    cmd = [str(BIN / "fmnist"), "tune", "quick", "--workers", POOL, "--limit", "1500", "--epochs", "2"]
    tune = subprocess.Popen(cmd, cwd=project, env=_env(up), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        names = {Path(w["log"]).stem: w for w in up[1]["workers"]}
        busy, deadline = {}, time.monotonic() + 300
        while len(busy) < 2 and time.monotonic() < deadline and tune.poll() is None:
            time.sleep(0.5)
            busy = {r.data.tags["fmnist.worker"]: r for r in _trial_runs(client, "RUNNING")}
        assert len(busy) == 2, f"not both workers in a trial: {busy}"
        victim = sorted(busy)[-1]
        killed_trial = int(busy[victim].data.tags["optuna.trial"])
        _kill_tree(names[victim]["pid"])  # its machine dies mid-trial
        out, _ = tune.communicate(timeout=600)
    finally:
        if tune.poll() is None:
            tune.kill()
        if victim:
            stack.start_server(root, victim)  # the next test needs two workers, whatever this one found
            up[1] = stack.load(root)  # with the restarted worker's pid
    assert tune.returncode == 0, out[-6000:]
    # Prefect's automation ended the dead flow run; the trials left then depend on the survivor's pace (0 on a quiet
    # machine, 1 on an AMD EPYC with the suite's other files on the same two cores), and the trials below are what counts
    assert re.search(r"crashed \(no heartbeat .*its worker died\); \d+ trials to go", out), out[-3000:]
    survivor = next(n for n in names if n != victim)
    trials = optuna.load_study(study_name="quick", storage=up[2][TUNE_STORAGE]).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states
    assert {t.user_attrs["worker"] for t in trials} == set(names)  # both workers ran trials
    killed = trials[killed_trial]
    assert killed.state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed_trial)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params and retry.user_attrs["worker"] == survivor
    runs = _trial_runs(client)
    assert len(runs) == len(trials)  # one child run per trial in PostgreSQL
    assert not [r for r in runs if r.info.status == "RUNNING"]  # no run left RUNNING
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    assert by_trial[killed_trial].info.status == "FAILED" and by_trial[killed_trial].data.tags["optuna.state"] == "failed"
    assert by_trial[retry.number].data.tags["optuna.retry_of"] == str(killed_trial)
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials.complete"] == 4
    assert (project / "reports" / "tune" / "quick.md").exists()


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


def test_down_and_up_again_keeps_the_registry_the_history_and_the_dvc_remote(up, project, prepared_cache, tmp_path):
    run([str(BIN / "dvc"), "push"], project, env=_env(up))  # what a team does before the night: every output on the remote
    champion = _mlflow(up).get_model_version_by_alias("fashion-mnist-cnn", "champion")
    accuracy = _champion_accuracy(up, prepared_cache, tmp_path)
    assert accuracy == pytest.approx(float(champion.tags["test_accuracy"]), abs=1e-6)  # the registry's own figure
    champion = champion.version
    down = _fmnist_stack(up, project, "down").stdout
    assert "S3 objects copied to" in down and not stack.is_up(Path(up[1]["root"]))
    assert "its data is kept" in _fmnist_stack(up, project, "status").stdout

    again = _fmnist_stack(up, project, "up", "--workers", "2").stdout
    assert "resuming the stack" in again and "resumed the databases of the last stack" in again
    assert "the S3 endpoint holds every model the registry names and every output dvc.lock names" in again
    state = stack.load(Path(up[1]["root"]))
    up[1:] = [state, stack.environment(state)]  # the later tests use the new ports
    assert all(r["running"] for r in stack.status(Path(state["root"])))
    assert _mlflow(up).get_model_version_by_alias("fashion-mnist-cnn", "champion").version == champion
    assert _champion_accuracy(up, prepared_cache, tmp_path) == accuracy  # its files, put back, as before
    history = json.loads(run([str(BIN / "fmnist"), "history", "--json"], project, env=_env(up)).stdout)
    assert any(h["alias"] == "champion" and h["to"] == champion for h in history)  # its promotion is still listed

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    endpoint = up[2]["AWS_ENDPOINT_URL"]
    run([str(BIN / "dvc"), "remote", "add", "--local", "-d", "stack", "s3://fmnist-dvc/cache"], fresh)
    run([str(BIN / "dvc"), "remote", "modify", "--local", "stack", "endpointurl", endpoint], fresh)
    run([str(BIN / "dvc"), "pull", "prepare"], fresh, env=_env(up))
    for split in ("train", "val", "test"):
        ours, theirs = (p / "data" / "prepared" / f"{split}.npz" for p in (fresh, project))
        assert ours.read_bytes() == theirs.read_bytes(), split
    assert all((Path(w["clone"]) / "dvc.yaml").exists() for w in state["workers"])
    assert all(w["fetched"] for w in state["workers"])  # the clones were reused and fetched, not cloned again


def test_the_s3_endpoint_down_while_a_model_is_logged_fails_the_stage_naming_it_and_the_retry_succeeds(up, project):
    params = _params(epochs=1)
    params["variants"] = {"baseline": params["variants"]["baseline"]}
    params["evaluate"]["tta"] = {"baseline": "flip+shift"}
    params["registry"]["model_name"] = "fashion-mnist-s3-drill"  # the restarted stand-in comes back empty: a registry of its own
    write_params(project, params)
    root = Path(up[1]["root"])
    endpoint = up[2]["MLFLOW_S3_ENDPOINT_URL"]
    flow = subprocess.Popen(
        [str(BIN / "fmnist"), "flow"],  # on this machine: the drill is the artifact store, not the workers
        cwd=project,
        env=_env(up, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, stopped, restarted = [], False, False
    try:
        for line in flow.stdout:
            lines.append(line)
            if not stopped and "Running stage 'evaluate@baseline'" in line:
                stack.stop(root, "s3")  # down while the evaluation logs the model
                stopped = True
            if stopped and not restarted and "ArtifactStoreDown: " in line:
                stack.start_server(root, "s3")  # back before the flow's retry (retrain.retry_delay)
                restarted = True
        flow.wait(timeout=600)
    finally:
        if flow.poll() is None:
            flow.kill()
        if not restarted:
            stack.start_server(root, "s3")
    out = "".join(lines)
    assert restarted, out[-6000:]
    assert flow.returncode == 0, out[-6000:]
    failure = next(line for line in lines if "ArtifactStoreDown: " in line)
    assert f"the S3 endpoint {endpoint}" in failure and "is it up?" in failure
    assert re.search(r"Retry 1/\d+ will start", out)  # the flow's retry of the stage, once the endpoint is back
    record = json.loads((project / "reports" / "promotion.json").read_text())
    assert record["model_name"] == "fashion-mnist-s3-drill" and record["decision"] == "promoted"


def test_every_process_sigkilled_then_up_recovers_and_reports_what_was_lost(up, project, prepared_cache, tmp_path):
    """An unclean stop (as a reboot would leave it): the S3 objects since the last clean ``down`` are gone, and said so.

    The S3 drill before this test registered ``fashion-mnist-s3-drill`` after the restart test's ``down`` copied the
    buckets, so its files existed only in the killed endpoint's memory; the champion's were in the copy.
    """
    root = Path(up[1]["root"])
    for row in stack.status(root):
        _kill_tree(row["pid"])
    deadline = time.monotonic() + 20  # SIGKILL is delivered, not waited for
    while any(r["running"] for r in stack.status(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(r["running"] for r in stack.status(root))
    again = _fmnist_stack(up, project, "up", "--workers", "2").stdout
    assert "resumed the databases of the last stack" in again
    state = stack.load(root)
    up[1:] = [state, stack.environment(state)]
    assert all(r["running"] for r in stack.status(root))
    status = _fmnist_stack(up, project, "status").stdout
    lost = next(line for line in status.splitlines() if line.startswith("MISSING") and "registered versions" in line)
    assert "1 registered versions" in lost and "fashion-mnist-s3-drill v1" in lost
    assert "fashion-mnist-cnn" not in lost  # in the copy: put back at up
    champion = _mlflow(up).get_model_version_by_alias("fashion-mnist-cnn", "champion")
    registered = float(champion.tags["test_accuracy"])  # what `register` recorded from the evaluation
    assert _champion_accuracy(up, prepared_cache, tmp_path) == pytest.approx(registered, abs=1e-6)
