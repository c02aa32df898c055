"""``fmnist serve`` and ``fmnist ui``: the model server (:mod:`pipeline.adapters.mlflow.server`) and MLflow's UI on this project's store, on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.adapters import prediction_log
from pipeline.adapters.mlflow import server
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params, load_params
from pipeline.core.environment import MLFLOW_SERVER

ALIAS = "champion"  # what `fmnist serve` follows unless --version pins one


def model_uri(model_name: str, version: str | None) -> str:
    """``models:/<name>/<version>``, or the champion's alias URI when no version is given."""
    return f"models:/{model_name}/{version}" if version else f"models:/{model_name}@{ALIAS}"


def serve_command(params: Params, version: str | None, host: str, port: int, log_to: Path | str | None) -> list[str]:
    """The server process of ``fmnist serve`` (:func:`pipeline.adapters.mlflow.server.command`): following the champion
    every ``serve.poll_s`` seconds, or ``version`` pinned; with its prediction log at ``log_to`` (None: no log)."""
    cfg = params.serve
    return server.command(
        params.registry.model_name, version, ALIAS, host, port, cfg.poll_s, params.base.class_names, log_to, cfg.sample_rate
    )


def ui_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host, "--port", str(port)]


def _exec(cmd: list[str]) -> None:
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri()} | MLFLOW_SERVER  # `mlflow ui`: no job runner
    print("+", " ".join(cmd), flush=True)
    os.execve(cmd[0], cmd, env)


def serve(args) -> None:
    params = load_params()
    to = prediction_log.where(Paths()) if params.serve.log else None  # the stack's database, or data/predictions/
    log_to = to.resolve() if isinstance(to, Path) else to
    _exec(serve_command(params, args.version, args.host, args.port, log_to))


def ui_link(host: str, port: int, experiment_id: str | None) -> str:
    """The UI's address on the experiment's training runs.

    MLflow 3.17's UI opens every experiment on its GenAI overview (traces) unless the browser has
    chosen "Model training" in the sidebar (it remembers the choice) or the link asks for it with
    ``workflowType=machine_learning``; the ``mlflow.experimentKind`` tag does not change this.
    """
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def ui(args) -> None:
    from pipeline.adapters.mlflow.store import client

    params = load_params()
    experiment = client().get_experiment_by_name(params.tracking.experiment)
    link = ui_link(args.host, args.port, experiment.experiment_id if experiment else None)
    print(f"MLflow UI: {link}  (in the sidebar, 'Model training' shows the runs; 'GenAI' the traces)", flush=True)
    _exec(ui_command(args.host, args.port))
