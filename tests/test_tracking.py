"""MLflow tracking (``pipeline/adapters/mlflow/``): where the store is, and what a tiny ``dvc repro`` logs to it.

The slow tests read the session's shared tiny repro (``tests/tiny_repro.py``: baseline and
dropout, 2 epochs on 2,000 images) through ``MlflowClient`` on its SQLite file, as a user would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
import tiny_repro
import yaml
from conftest import ROOT, mlflow_client, tiny_params, write_params

from pipeline.adapters.files import read_history
from pipeline.adapters.mlflow import epochs, lineage, orphans, store
from pipeline.adapters.paths import Paths, repo_root
from pipeline.core.config import flatten, load_params
from pipeline.stages import train as train_stage

VARIANTS = ("baseline", "dropout")


@pytest.fixture(scope="module")
def repro(prepared_cache, tmp_path_factory) -> Path:
    return tiny_repro.reproduced(prepared_cache, tmp_path_factory)


@pytest.fixture(scope="module")
def runs(repro):
    """The experiment's runs: the parent runs and {variant: [child runs]}."""
    client = mlflow_client(repro)
    experiment = client.get_experiment_by_name("fashion-mnist")
    assert experiment is not None, "no experiment 'fashion-mnist' in the store"
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get("fmnist.role") == "pipeline"]
    children = {v: [r for r in found if r.info.run_name == v] for v in VARIANTS}
    return client, parents, children


# --- where the store is ---------------------------------------------------------------------


def test_tracking_uri_honours_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999"


def test_store_is_the_main_repository_root_also_from_a_dvc_temp_experiment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = (tmp_path / "repo").resolve()
    temp_copy = repo / ".dvc" / "tmp" / "exps" / "tmpk3v9x2aa"  # where `dvc exp run --temp/--queue` runs stages
    (temp_copy / "pipeline").mkdir(parents=True)
    expected = f"sqlite:///{repo / 'mlflow.db'}"
    for cwd in (repo, temp_copy, temp_copy / "pipeline"):
        monkeypatch.chdir(cwd)
        assert repo_root() == repo
        assert store.tracking_uri() == expected  # absolute: sqlite:////tmp/...
        assert Paths().mlartifacts.as_uri() == (repo / "mlartifacts").as_uri()
    assert repo_root(temp_copy) == repo
    assert expected.startswith("sqlite:////")


def test_git_dirty_means_code_or_params_changed_not_what_the_pipeline_writes(project):
    assert lineage.lineage_tags(Paths())["git.dirty"] == "false"
    (project / "dvc.lock").write_text("schema: '2.0'\n")  # what every `dvc repro` rewrites
    subprocess.run(["git", "add", "dvc.lock"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], cwd=project, check=True)
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert lineage.lineage_tags(Paths())["git.dirty"] == "false"
    with open(project / "pipeline" / "core" / "models.py", "a") as fh:
        fh.write("\n# an uncommitted change\n")
    assert lineage.lineage_tags(Paths())["git.dirty"] == "true"


# --- what one tiny `dvc repro` logs -------------------------------------------------------------


@pytest.mark.slow
def test_one_parent_run_and_one_finished_child_per_variant(runs):
    _, parents, children = runs
    [parent] = parents
    assert parent.info.status == "FINISHED"
    for variant in VARIANTS:
        [child] = children[variant]
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["fmnist.variant"] == variant


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_run_logs_its_params_epoch_curves_and_test_metrics(runs, repro, variant):
    client, _, children = runs
    [run] = children[variant]
    params = load_params(repro / "params.yaml")
    expected = flatten(dataclasses.asdict(params.variant(variant))) | {"seed": params.base.seed}
    assert run.data.params == {k: str(v) for k, v in expected.items()}

    history = read_history(repro / "models" / variant / "history.csv")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [step for step, _ in logged] == [1, 2], key  # step = epoch, one point each
        np.testing.assert_allclose([v for _, v in logged], history[key], atol=1e-5)

    report = json.loads((repro / "reports" / "metrics" / f"{variant}.json").read_text())
    for key in ("test_accuracy", "test_loss", "macro_f1", "ece"):
        assert run.data.metrics[key] == pytest.approx(report[key])
    recalls = {k for k in run.data.metrics if k.startswith("recall.")}
    assert len(recalls) == 10
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(report["trained_val_accuracy"])  # as trained
    assert run.data.metrics["val_accuracy_served"] == pytest.approx(report["val_accuracy"])  # with the served TTA


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_run_holds_the_confusion_matrix_curves_mistakes_and_data_summary(runs, repro, variant, tmp_path):
    client, _, children = runs
    [run] = children[variant]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.json"} <= files
    assert {"evaluation/curves.png", "evaluation/mistakes.png"} <= files
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {"data/data.json"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "training")} == {"training/history.csv"}

    local = Path(client.download_artifacts(run.info.run_id, "evaluation", str(tmp_path)))
    assert (local / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cm = json.loads((local / "confusion_matrix.json").read_text())
    counts = np.array(cm["rows_true_columns_predicted"])
    assert cm["labels"] == list(load_params(repro / "params.yaml").base.class_names)
    assert counts.shape == (10, 10) and counts.sum() == 10_000
    report = json.loads((repro / "reports" / "metrics" / f"{variant}.json").read_text())
    assert np.trace(counts) / counts.sum() == pytest.approx(report["test_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_run_carries_the_lineage_tags(runs, repro, variant):
    _, _, children = runs
    tags = children[variant][0].data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repro, capture_output=True, text=True, check=True).stdout.strip()
    assert tags["git.commit"] == head
    assert tags["git.dirty"] == "false"  # params and code are committed in the copy
    lock = yaml.safe_load((repro / "dvc.lock").read_text())
    [prepared] = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared"]
    assert tags["data.prepared_md5"] == prepared["md5"]
    assert tags["params.sha256"] == hashlib.sha256((repro / "params.yaml").read_bytes()).hexdigest()[:16]
    assert tags["version.tensorflow"] == tf.__version__
    assert tags["version.keras"] == keras.__version__
    assert tags["version.mlflow"] == mlflow.__version__
    assert tags["version.numpy"] == np.__version__


def test_a_flow_parent_run_imports_neither_keras_nor_tensorflow(tmp_path):
    """The flow process only orchestrates: opening its MLflow run must not cost the seconds of a keras import."""
    code = (
        "import sys; from pipeline.orchestration import flows; from pipeline.adapters.mlflow import runs, store; "
        "from pipeline.core.config import load_params; from pipeline.adapters.paths import Paths; "
        "run = runs.start_pipeline_run(load_params(), Paths(), 'probe', {}); runs.end_pipeline_run(run); "
        "tags = store.client().get_run(run).data.tags; "
        "print(tags['version.tensorflow'], tags['version.keras'], 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-4:] == [tf.__version__, keras.__version__, "False", "False"]
    assert issubclass(epochs.EpochLogger, keras.callbacks.Callback)  # in its own module, which only training imports


@pytest.mark.slow
def test_variant_run_logs_the_prepared_dataset_as_its_input(runs, repro):
    _, _, children = runs
    lock = yaml.safe_load((repro / "dvc.lock").read_text())
    [prepared] = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared"]
    for variant in VARIANTS:
        [dataset_input] = children[variant][0].inputs.dataset_inputs
        assert dataset_input.dataset.name == "fashion-mnist-prepared"
        assert prepared["md5"].startswith(dataset_input.dataset.digest)
        assert json.loads(dataset_input.dataset.source)["uri"] == str((repro / "data" / "prepared").resolve())
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


@pytest.mark.slow
def test_metrics_report_names_its_run_and_the_parent_records_the_promotion(runs, repro, tmp_path):
    client, [parent], children = runs
    for variant in VARIANTS:
        report = json.loads((repro / "reports" / "metrics" / f"{variant}.json").read_text())
        assert report["mlflow_run_id"] == children[variant][0].info.run_id
    promotion = json.loads((repro / "reports" / "promotion.json").read_text())
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "promotion.json", str(tmp_path))).read_text())
    assert logged == promotion
    assert parent.data.tags["fmnist.decision"] == f"{promotion['variant']} v1: promoted"


# --- run status under failure ----------------------------------------------------------------


def _variant_runs(repo: Path, variant: str) -> list:
    client = mlflow_client(repo)
    experiment = client.get_experiment_by_name("fashion-mnist")
    return client.search_runs([experiment.experiment_id], f"tags.`fmnist.variant` = '{variant}'")


@pytest.mark.slow
def test_a_failing_training_leaves_its_run_failed_not_running(prepared_project):
    params = tiny_params(("baseline",))
    params["variants"]["baseline"]["learning_rate"] = 1e12  # diverges within the first batches
    write_params(prepared_project, params)
    with pytest.raises(RuntimeError, match="diverged|NaN|Inf"):
        train_stage.main("baseline", limit=256)
    [run] = _variant_runs(prepared_project, "baseline")
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None


@pytest.mark.slow
def test_runs_left_running_by_dead_processes_are_marked_failed_at_the_next_start(prepared_project):
    params = load_params()
    experiment = store.experiment_id(params)
    client = mlflow_client(prepared_project)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    killed = {  # as a `kill -9` leaves them: RUNNING, no end time
        "untagged": client.create_run(experiment, run_name="baseline", tags={"fmnist.variant": "baseline"}),
        "dead pid": client.create_run(experiment, tags={"fmnist.variant": "baseline", "fmnist.process": f"{host}/{dead.pid}:1"}),
    }
    alive = {  # must be left alone: a concurrent training of the same variant, or another variant
        "live pid": client.create_run(
            experiment, tags={"fmnist.variant": "baseline", "fmnist.process": orphans.process_tag(os.getpid())}
        ),
        "other variant": client.create_run(experiment, tags={"fmnist.variant": "dropout"}),
    }
    train_stage.main("baseline", epochs=1, limit=64)

    for name, run in killed.items():
        after = client.get_run(run.info.run_id)
        assert after.info.status == "FAILED", name
        assert after.data.tags["fmnist.failure"].startswith("orphaned"), name
    for name, run in alive.items():
        assert client.get_run(run.info.run_id).info.status == "RUNNING", name
    new = json.loads((prepared_project / "models" / "baseline" / "train.json").read_text())["mlflow_run_id"]
    finished = client.get_run(new)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["fmnist.process"] == orphans.process_tag(os.getpid())
