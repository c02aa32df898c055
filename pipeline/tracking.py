"""MLflow tracking, model logging and registry access: the only module that imports mlflow.

Store: ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<repo>/mlflow.db`` with
artifacts in ``<repo>/mlartifacts``, where ``<repo>`` is the main repository root even from
a ``dvc exp run --temp`` copy, so every experiment lands in one store.

Runs: one parent run per pipeline execution (tag ``fmnist.role=pipeline``; opened by the
first stage that needs it, closed by ``register``) and one nested run per variant.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from pipeline.config import Params, RegistryError, Train, repo_root
from pipeline.images import InputError
from pipeline.io import file_sha256

log = logging.getLogger(__name__)

PARENT_ENV = "FMNIST_PARENT_RUN_ID"  # set by orchestrators to group stage runs under their own parent


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the absolute SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (repo_root() / "mlartifacts").as_uri()


_opened: set[str] = set()  # stores this process has created or checked


def client() -> MlflowClient:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri in _opened or not uri.startswith("sqlite:///"):
        return MlflowClient()
    with _store_lock(Path(uri.removeprefix("sqlite:///"))):
        c = MlflowClient()  # creates or migrates the store
    _opened.add(uri)
    return c


@contextmanager
def _store_lock(db: Path) -> Iterator[None]:
    """A file lock beside a SQLite store, held while this process first opens it.

    MLflow sets up a new SQLite store when a client first opens it; several processes doing that
    at once (the parallel stages of ``dvc exp run --queue``, workers) race in its schema
    migrations and fail with alembic's "expected to match one row". The lock makes the first one
    create it and the others find it done.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or by the kernel if we die
        yield


def experiment_id(params: Params) -> str:
    """The experiment named in params, created with artifacts beside a local store."""
    c = client()
    exp = c.get_experiment_by_name(params.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    local = tracking_uri().startswith("sqlite:")
    try:
        return c.create_experiment(params.tracking.experiment, artifact_location=artifact_root() if local else None)
    except mlflow.exceptions.MlflowException:  # created by a concurrent process meanwhile
        return c.get_experiment_by_name(params.tracking.experiment).experiment_id


def flatten(obj: dict, prefix: str = "") -> dict[str, object]:
    """``{"augment": {"shift": 2}}`` -> ``{"augment.shift": 2}``."""
    out: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=repo_root()).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def prepared_data_hash(root: Path | None = None) -> str:
    """The DVC hash of ``data/prepared`` recorded in ``dvc.lock`` (empty if not recorded yet)."""
    import yaml

    lock = (root or Path.cwd()) / "dvc.lock"
    if not lock.exists():
        return ""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("prepare", {}).get("outs", []):
        if out.get("path") == "data/prepared":
            return out.get("md5", "")
    return ""


# What git.dirty looks at: the tracked files, less those that the pipeline itself rewrites as it runs.
DIRTY_PATHSPEC = ("--", ".", ":(exclude)dvc.lock", ":(exclude)reports", ":(exclude)data/accepted")


def _version(package: str) -> str:
    """A library's version without importing it (importing tensorflow takes seconds)."""
    if package in sys.modules:
        return sys.modules[package].__version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # installed under another distribution name, e.g. tensorflow-cpu
        return "unknown"


def lineage_tags(params: Params) -> dict[str, str]:
    """Git commit and dirtiness, the prepared-data hash, a params hash and library versions."""
    params_text = Path("params.yaml").read_text() if Path("params.yaml").exists() else ""
    return {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no", *DIRTY_PATHSPEC))).lower(),
        "data.prepared_md5": prepared_data_hash(),
        "params.sha256": hashlib.sha256(params_text.encode()).hexdigest()[:16],
        "version.tensorflow": _version("tensorflow"),
        "version.keras": _version("keras"),
        "version.mlflow": mlflow.__version__,
        "version.numpy": np.__version__,
    }


def open_pipeline_run(params: Params) -> str | None:
    """The parent run of the current pipeline execution (from the environment or the open one), if any."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    c, exp = client(), experiment_id(params)
    running = c.search_runs(
        [exp], "tags.`fmnist.role` = 'pipeline' and attributes.status = 'RUNNING'", max_results=1, order_by=["start_time DESC"]
    )
    return running[0].info.run_id if running else None


def pipeline_run_id(params: Params) -> str:
    """The parent run of the current pipeline execution: the open one, or a new one."""
    if found := open_pipeline_run(params):
        return found
    c, exp = client(), experiment_id(params)
    run = c.create_run(
        exp, run_name=time.strftime("pipeline-%Y%m%d-%H%M%S"), tags={"fmnist.role": "pipeline"} | lineage_tags(params)
    )
    return run.info.run_id


def finish_pipeline_run(run_id: str, promotion: dict) -> None:
    """Record the promotion decision on the parent run and close it (orchestrators close their own)."""
    c = client()
    c.log_dict(run_id, promotion, "promotion.json")
    c.set_tag(run_id, "fmnist.decision", f"{promotion['variant']} v{promotion['challenger_version']}: {promotion['decision']}")
    if not os.environ.get(PARENT_ENV):
        c.set_terminated(run_id, "FINISHED")


def start_flow_run(params: Params, name: str, tags: dict[str, str]) -> str:
    """Open the parent run of one orchestrated execution; its stages join it through ``PARENT_ENV``."""
    c, exp = client(), experiment_id(params)
    run = c.create_run(exp, run_name=name, tags={"fmnist.role": "pipeline"} | lineage_tags(params) | tags)
    return run.info.run_id


def end_flow_run(run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
    """Tag and close a parent run opened by :func:`start_flow_run` (status FINISHED or FAILED)."""
    c = client()
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, value)
    c.set_terminated(run_id, status)


def log_drift(run_id: str, metrics: dict[str, float], report: dict, figure) -> None:
    """Log the drift figures of new data to a (parent) run: metrics, ``drift/drift.json``, ``drift/drift.png``."""
    c = client()
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], synchronous=True)
    c.log_dict(run_id, report, "drift/drift.json")
    c.log_figure(run_id, figure, "drift/drift.png")


@functools.cache
def _epoch_logger_class():
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Logs train and validation loss and accuracy per epoch (step = epoch, from 1) in one batch call.

        On a resumed run, epochs already in the run's history are not logged again. It runs before
        ``BackupAndRestore`` saves the epoch, so a kill never leaves a gap in the curves; a kill
        between the two redoes the epoch and the run keeps the first attempt's figures for it.
        """

        def __init__(self, run_id: str):
            super().__init__()
            self.run_id = run_id
            self.client = client()
            self.logged_steps = {m.step for m in self.client.get_metric_history(run_id, "loss")}

        def on_epoch_end(self, epoch, logs=None):
            step = epoch + 1
            if step in self.logged_steps:
                return
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, step) for k, v in (logs or {}).items()]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            self.logged_steps.add(step)

    return EpochLogger


def __getattr__(name: str):
    """``EpochLogger``, a keras callback, is defined on first use: importing keras takes ~4 s, and the
    flows and registry commands that import this module never need it."""
    if name == "EpochLogger":
        return _epoch_logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class VariantRun:
    """Handle on a variant's MLflow run, or a no-op one when tracking is off."""

    run_id: str | None = None

    def callbacks(self) -> list:
        return [_epoch_logger_class()(self.run_id)] if self.run_id else []

    def log_training(self, info: dict) -> None:
        if not self.run_id:
            return
        keys = ("params", "epochs_trained", "best_epoch", "val_accuracy", "val_loss", "train_seconds", "train_images")
        mlflow.log_metrics({f"best_{k}" if k.startswith("val_") else k: float(info[k]) for k in keys})


def _process_tag(pid: int) -> str | None:
    """``<host>/<pid>:<start time>`` of a live process on this host, or None if it has exited.

    The start time (from ``/proc``) tells a reused pid from the process that tagged a run.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{socket.gethostname()}/{pid}:{start}"


def _still_running(run) -> bool:
    """Whether the process that opened ``run`` is alive: on this host, checked; on another host, assumed."""
    tag = run.data.tags.get("fmnist.process", "")
    host, _, proc = tag.partition("/")
    if not tag:
        return False  # opened by a process that did not record itself: only a dead one leaves it RUNNING here
    if host != socket.gethostname():
        log.warning("run %s is RUNNING on host %s: left alone (its process cannot be checked from here)", run.info.run_id, host)
        return True
    pid = proc.partition(":")[0]
    return pid.isdigit() and _process_tag(int(pid)) == tag


def _orphans(c: MlflowClient, exp: str, variant: str, keep: str | None) -> None:
    """Mark runs of ``variant`` left RUNNING by a killed process as FAILED (concurrent live ones are left alone)."""
    stale = c.search_runs([exp], f"tags.`fmnist.variant` = '{variant}' and attributes.status = 'RUNNING'")
    for run in stale:
        if run.info.run_id != keep and not _still_running(run):
            c.set_terminated(run.info.run_id, "FAILED")
            c.set_tag(run.info.run_id, "fmnist.failure", "orphaned: its process died; marked FAILED at the next start")
            log.warning("run %s of %s was left RUNNING by a killed process: marked FAILED", run.info.run_id, variant)


def _resumable(c: MlflowClient, backup_dir: Path) -> str | None:
    marker = backup_dir / "mlflow_run_id"
    if not (marker.exists() and (backup_dir / "training_metadata.json").exists()):
        return None
    run_id = marker.read_text().strip()
    try:
        c.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


@contextmanager
def variant_run(
    params: Params, variant: str, cfg: Train, backup_dir: Path, *, enabled: bool = True, nested: bool = True
) -> Iterator[VariantRun]:
    """Open (or, after a crash, resume) the MLflow run of one variant's training.

    The run ends FINISHED when the block succeeds and FAILED when it raises.
    """
    if not enabled:
        yield VariantRun()
        return
    c, exp = client(), experiment_id(params)
    resume = _resumable(c, backup_dir)
    _orphans(c, exp, variant, keep=resume)
    tags = {"fmnist.variant": variant, "fmnist.role": "variant"} | lineage_tags(params)
    process = {"fmnist.process": _process_tag(os.getpid())}  # lets the next start tell a live run from an orphan
    if resume:
        run = mlflow.start_run(run_id=resume)
        log.info("resuming MLflow run %s", resume)
    else:
        parent = pipeline_run_id(params) if nested else None
        run = mlflow.start_run(experiment_id=exp, run_name=variant, parent_run_id=parent, tags=tags | process)
    with run:  # FAILED on exception, FINISHED otherwise
        if resume:
            mlflow.set_tags(process)
        else:
            mlflow.log_params(flatten(dataclasses.asdict(cfg)) | {"seed": params.base.seed})
            _log_dataset()
        backup_dir.mkdir(parents=True, exist_ok=True)
        (backup_dir / "mlflow_run_id").write_text(run.info.run_id)
        yield VariantRun(run.info.run_id)


def _log_dataset() -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = prepared_data_hash() or "unversioned"
    source = resolve_dataset_source(str(Path("data/prepared").resolve()))
    mlflow.log_input(MetaDataset(source, name="fashion-mnist-prepared", digest=digest[:36]), context="training")
    if Path("reports/data.json").exists():
        mlflow.log_artifact("reports/data.json", artifact_path="data")


class RejectedInput(InputError, MlflowException):
    """Bad model input: an ``InputError`` to the CLI, and an HTTP 400 with this message (no stack trace) from the server."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


class FashionClassifier(mlflow.pyfunc.PythonModel):
    """The served model: for each image, the class index, the class name and ten probabilities.

    Loads the Keras file in safe mode after checking its SHA-256 against the one recorded at
    logging time, and validates every request with :func:`pipeline.images.to_model_input`.
    """

    def load_context(self, context):
        import keras

        path = Path(context.artifacts["keras_model"])
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        if file_sha256(path) != meta["sha256"]:
            raise RuntimeError(f"{path}: SHA-256 does not match the hash recorded when the model was logged; refusing to load")
        self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        self.class_names = meta["class_names"]

    def predict(self, context, model_input, params=None):
        import keras
        import pandas as pd

        from pipeline.images import to_model_input

        try:
            x = to_model_input(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        except InputError as exc:
            raise RejectedInput(str(exc)) from None
        logits = np.asarray(self.model.predict(x, batch_size=1000, verbose=0), np.float32)
        proba = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        index = proba.argmax(axis=1)
        return pd.DataFrame(
            {
                "class_index": index.astype(int),
                "class_name": [self.class_names[i] for i in index],
                "probabilities": [[round(float(p), 6) for p in row] for row in proba],
            }
        )


def _requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"mlflow=={mlflow.__version__}",
        "numpy",
        "pandas",
        "pillow",
    ]


def log_model(model_path: Path, class_names: tuple[str, ...]) -> str:
    """Log the variant's model to the active run: the Keras flavour and the serving wrapper.

    Returns:
        The URI of the serving model (``models:/<model id>``), which ``register`` registers.
    """
    import keras
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    sha = file_sha256(model_path)
    tmp = Path(tempfile.mkdtemp(prefix="fmnist-serving-"))  # not beside the model: models/ holds train's outputs only
    meta = tmp / "serving.json"
    meta.write_text(json.dumps({"sha256": sha, "class_names": list(class_names)}))
    reqs = _requirements()
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    keras_sig = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, 28, 28, 1))]), Schema([TensorSpec(np.dtype("float32"), (-1, 10))])
    )
    mlflow.keras.log_model(model, name="keras_model", signature=keras_sig, pip_requirements=reqs)
    # Any numpy array passes MLflow's check (Tensor object (-1,)), and the server parses JSON into one;
    # FashionClassifier.predict validates it. (In-process, MLflow refuses plain lists before predict.)
    serving_sig = ModelSignature(Schema([TensorSpec(np.dtype("O"), (-1,))]))
    try:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=FashionClassifier(),
            artifacts={"keras_model": str(model_path), "meta": str(meta)},
            code_paths=[str(Path(__file__).parent)],
            signature=serving_sig,
            pip_requirements=reqs,
            tags={"model_sha256": sha},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mlflow.set_tag("model_sha256", sha)
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def log_evaluation(params: Params, run_id: str | None, metrics: dict, cm: np.ndarray, figures: dict, model_dir: Path) -> None:
    """Log test metrics, per-class metrics, the confusion matrix, figures and the model to the run."""
    if not run_id:
        return
    client()
    with mlflow.start_run(run_id=run_id):
        scalars = {k: float(metrics[k]) for k in ("test_accuracy", "test_loss", "macro_f1", "ece")}
        per_class = {
            f"{kind}.{name.replace('/', '-').replace(' ', '_')}": value
            for kind in ("precision", "recall", "f1")
            for name, value in metrics[f"per_class_{kind}"].items()
        }
        mlflow.log_metrics(scalars | per_class)
        names = list(params.base.class_names)
        mlflow.log_dict(
            {"labels": names, "rows_true_columns_predicted": cm.astype(int).tolist()}, "evaluation/confusion_matrix.json"
        )
        mlflow.log_dict(metrics, "evaluation/metrics.json")
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"evaluation/{name}")
        mlflow.log_artifact(str(model_dir / "history.csv"), "training")
        log_model(model_dir / "model.keras", params.base.class_names)


# --- Model Registry -------------------------------------------------------------------------


def register_version(params: Params, run_id: str, tags: dict[str, str]) -> str:
    """Register the serving model logged by ``run_id`` as a new version; returns the version number."""
    c = client()
    run = c.get_run(run_id)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise RegistryError(f"run {run_id} has no logged model (tag model_uri); was its evaluation completed?")
    name = params.registry.model_name
    try:
        c.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # exists already
    mv = c.create_model_version(
        name, model_uri, run_id=run_id, tags=tags | {"model_sha256": run.data.tags.get("model_sha256", "")}
    )
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def load_version(name: str, version: str):
    """Load a registered version as a pyfunc, after checking its Keras file against the version's ``model_sha256`` tag.

    The check runs before anything is deserialized; a version without the tag is refused too.
    """
    mlflow.set_tracking_uri(tracking_uri())
    try:
        expected = version_tags(name, version).get("model_sha256")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    except MlflowException as exc:
        raise RegistryError(
            f"{name} version {version}: cannot be read from the registry at {tracking_uri()} ({exc.message})"
        ) from None
    if not expected:
        raise RegistryError(f"{name} version {version}: no model_sha256 tag to check its model file against; refusing to load it")
    keras_file = local / mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]["keras_model"]["path"]
    if file_sha256(keras_file) != expected:
        raise RegistryError(f"{name} version {version}: model file hash does not match its model_sha256 tag; refusing to load it")
    try:
        return mlflow.pyfunc.load_model(str(local))
    except RuntimeError as exc:  # FashionClassifier.load_context's own hash check
        raise RegistryError(f"{name} version {version}: {exc}") from None
