"""``fmnist serve`` and ``fmnist ui``: MLflow's model server and UI on this project's store, on 127.0.0.1."""

from __future__ import annotations

import os
import sys

from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.core.config import load_params


def serve_command(model_name: str, version: str | None, host: str, port: int) -> list[str]:
    ref = f"models:/{model_name}/{version}" if version else f"models:/{model_name}@champion"
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", ref, "--env-manager", "local", "-h", host, "-p", str(port)]


def ui_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host, "--port", str(port)]


def _exec(cmd: list[str]) -> None:
    # `mlflow models serve` starts `uvicorn` from PATH: put this interpreter's bin first, so it
    # works without an activated virtual environment (`.venv/bin/fmnist serve`).
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(), "PATH": path}
    print("+", " ".join(cmd), flush=True)
    os.execvpe(cmd[0], cmd, env)


def serve(args) -> None:
    params = load_params()
    _exec(serve_command(params.registry.model_name, args.version, args.host, args.port))


def ui(args) -> None:
    _exec(ui_command(args.host, args.port))
