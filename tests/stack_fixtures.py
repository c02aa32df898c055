"""The team stack for the stack tests: one per test module (PostgreSQL, the S3 stand-in, MLflow, Prefect, Prometheus,
Alertmanager, the alert relay and two process workers, all on 127.0.0.1), its project, and the helpers that drive both.

Each module that asks for ``up`` gets a stack of its own (``stack_project`` is its project; the stack
modules name it ``project``, over the conftest's fixture of that name), so two modules run on two
pytest-xdist workers side by side. The project is the coordinator, and the git remote the workers
clone from; its params are those of the session's tiny reproduced project (tests/tiny_repro.py),
so the variants trained on workers can be compared with that sequential run to the digit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest
import tiny_repro
from conftest import BIN, checkout_prepared, make_project, run, tiny_params

from benchmarks.sandbox import commit
from pipeline import stack
from pipeline.core.environment import ALERTS_URL

POOL = "fmnist-process"
VARIANTS = ("baseline", "dropout")


def _params(epochs: int = 2) -> dict:
    """The tiny reproduced project's params (tests/tiny_repro.py), with ``epochs``."""
    params = tiny_params(VARIANTS, epochs=epochs)
    for name, variant in params["variants"].items():
        variant["augment"] = {"shift": 0, "flip": True}
        params["evaluate"]["tta"][name] = "flip+shift"
    params["retrain"] |= {"retries": 2, "retry_delay": 5}
    return params


@pytest.fixture(scope="module")
def stack_project(prepared_cache, tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("stack") / "repo", _params())
    checkout_prepared(repo, prepared_cache)
    commit(repo, "prepared")  # dvc.lock with the download and prepare entries: what a team's repository holds
    return repo


@pytest.fixture(scope="module")
def up(stack_project, alert_receiver):
    project = stack_project
    root = Path(tempfile.mkdtemp(prefix="fmnist-stack-"))  # not under pytest's root-only temp dir: postgres must reach it
    root.chmod(0o755)
    cmd = [str(BIN / "fmnist"), "stack", "up", "--workers", "2", "--dir", str(root)]
    proc = run(cmd, project, env=tiny_repro.project_env(**{ALERTS_URL: alert_receiver.url}))
    state = stack.load(root)
    try:
        yield [proc.stdout, state, stack.environment(state)]  # a list: a test that restarts the stack puts the new ports in
    finally:
        down = [str(BIN / "fmnist"), "stack", "down", "--purge", "--dir", str(root)]
        run(down, project, check=False, env=tiny_repro.project_env())


def _fmnist_stack(up, project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "fmnist"), "stack", *args, "--dir", up[1]["root"]], project, check=check, env=tiny_repro.project_env())


def _env(up, **extra) -> dict[str, str]:
    return tiny_repro.project_env(**up[2], **extra)


def _flow(project: Path, up, *args: str, **extra) -> subprocess.CompletedProcess:
    return run([str(BIN / "fmnist"), "flow", *args], project, check=False, env=_env(up, **extra))


def _prefect(up, path: str, body: dict) -> list:
    request = urllib.request.Request(
        f"{up[2]['PREFECT_API_URL']}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def _on_workers(up) -> list[dict]:
    """The coordinator's record of the last training on workers: one row per variant."""
    found = _prefect(
        up, "artifacts/filter", {"artifacts": {"key": {"any_": ["variants-on-workers"]}}, "sort": "CREATED_DESC", "limit": 1}
    )
    data = found[0]["data"]
    return json.loads(data) if isinstance(data, str) else data


def _mlflow(up):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=up[2]["MLFLOW_TRACKING_URI"])


def _champion_accuracy(up, prepared_cache: Path, where: Path) -> float:
    """The champion's test accuracy, loaded through ``models:/...@champion`` in ``where`` (a process on the stack)."""
    test = prepared_cache / "data" / "prepared" / "test.npz"
    script = (
        "import numpy as np, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/fashion-mnist-cnn@champion')\n"
        f"d = np.load('{test}')\n"
        "print(float(np.mean(m.predict(d['x'].reshape(-1, 28, 28, 1))['class_index'].to_numpy() == d['y'])))\n"
    )
    return float(run([str(BIN / "python"), "-c", script], where, env=_env(up)).stdout.splitlines()[-1])


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, as if its machine died (Prefect puts flow runs in their own session).

    The process first: killed after its children, a Prefect worker lives long enough to see its flow run's process
    exit with -9 and report the run Crashed itself, which a dead machine could not.
    """
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _training(pid: int) -> str | None:
    """The variant a worker is training now: the ``pipeline.stages.train`` process among its descendants."""
    for p in psutil.Process(pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "pipeline.stages.train" in cmd:
            return cmd[-1]
    return None


def _epochs_logged(client, parent: str | None, variant: str) -> int:
    if not parent:
        return 0
    found = client.search_runs(
        [client.get_experiment_by_name("fashion-mnist").experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and tags.`fmnist.variant` = '{variant}' and attributes.status = 'RUNNING'",
    )
    return max((len(client.get_metric_history(r.info.run_id, "loss")) for r in found), default=0)
