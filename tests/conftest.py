"""Shared fixtures: a temporary copy of the project (a real git + DVC repo) with tiny params.

Tests that run stages do so in such a copy, with ``cwd`` inside it, so the MLflow store
(``<copy>/mlflow.db``), ``data/``, ``models/`` and ``reports/`` are all private to the test.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from benchmarks import sandbox
from benchmarks.tiny import DEBIAN_DATA
from benchmarks.tiny import tiny_params as _tiny_params
from pipeline.adapters.locks import exclusive
from pipeline.core.environment import CLIENT, MLFLOW_SERVER
from pipeline.stack import processes
from pipeline.stack.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytest_plugins = ("stack_fixtures",)  # the stack tests' fixtures: a stack per module that asks for one

needs_real_data = pytest.mark.skipif(
    not (DEBIAN_DATA / "train-images-idx3-ubyte.gz").exists(),
    reason="real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (CI installs it)",
)


# `make test` runs the files on three pytest-xdist workers (`-n 3 --dist loadfile --no-loadscope-reorder`): a
# file's tests stay together, in order, on one worker, and most files spend much of their time waiting on servers
# and subprocesses, so three overlap the waits on two cores. The files go out in this order, then the rest
# (without `--no-loadscope-reorder` xdist would hand out the files with the most tests first): the longest
# (test_stack.py, about 6 min alone) at once, then test_serving.py, whose first test builds the tiny reproduced
# project that test_stack.py and four other files share (so it is ready before they need it), then the next
# longest; test_stack_drills.py (`make test-drills`, not in `make test`) has a stack of its own so that it can run
# beside test_stack.py. The suite's times on one, two, three and four workers: docs/development.md.
FIRST = ("test_stack.py", "test_serving.py", "test_pipeline_e2e.py", "test_stack_drills.py", "test_bench.py",
         "test_flows.py", "test_registry_shared.py", "test_concurrency.py", "test_promote.py", "test_train.py")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


def pytest_configure(config: pytest.Config) -> None:
    """A Prefect home per test process: flows that two workers run at once never share a Prefect database, and the
    user's ~/.prefect is left alone."""
    config._fmnist_prefect_home = tempfile.mkdtemp(prefix="fmnist-test-prefect-home-")
    os.environ["PREFECT_HOME"] = config._fmnist_prefect_home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_fmnist_prefect_home", ""), ignore_errors=True)


def tiny_params(variants: tuple[str, ...] = ("baseline", "dropout"), epochs: int = 1, limit: int = 2000) -> dict:
    """The project's params.yaml with few variants, few epochs and a small training subset."""
    return _tiny_params(
        yaml.safe_load((ROOT / "params.yaml").read_text()), variants, epochs=epochs, limit=limit, mirror=DEBIAN_DATA
    )


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's environment first on PATH; output captured."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | kwargs.pop("env", {})
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd=repo, check=check)


def no_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the caller's stores from this process's environment (:data:`pipeline.core.environment.CLIENT`)."""
    for name in CLIENT:
        monkeypatch.delenv(name, raising=False)


write_params = sandbox.write_params


def make_project(dest: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC repository holding the project's code and ``params`` (:func:`benchmarks.sandbox.make_project`)."""
    return sandbox.make_project(dest, params or tiny_params(), ROOT)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project copy with tiny params; the test's cwd; its own MLflow store."""
    repo = make_project(tmp_path / "repo")
    monkeypatch.chdir(repo)
    no_clients(monkeypatch)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return repo


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test run, shared read-only by every module and pytest-xdist worker.

    Under xdist the first worker to ask builds it (in the run's temporary root, which all workers
    share) while the others wait on its lock, instead of each building its own copy. A build that
    raises leaves nothing behind, so the next worker to ask tries again and fails with its own error.
    """
    root = tmp_path_factory.getbasetemp()  # this run's, or under xdist this worker's (popen-gwN)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's, above every worker's
    folder, done = root / name, root / f"{name}.built"
    with exclusive(root / f"{name}.lock"):  # the project's flock helper: a worker that dies releases it
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/raw`` and ``data/prepared`` built once per test run from the real data (copied by tests, never changed)."""
    if not (DEBIAN_DATA / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    return (
        built_once(tmp_path_factory, "prepared", lambda folder: dvc(make_project(folder / "repo"), "repro", "prepare")) / "repo"
    )


def checkout_prepared(repo: Path, cache: Path) -> Path:
    """Give ``repo`` the ``download`` and ``prepare`` results of ``cache`` (DVC cache, lock, reports)."""
    shutil.copytree(cache / ".dvc" / "cache", repo / ".dvc" / "cache", dirs_exist_ok=True)
    shutil.copy(cache / "dvc.lock", repo / "dvc.lock")
    dvc(repo, "checkout", "-q", "download", "prepare")
    (repo / "reports").mkdir(exist_ok=True)
    for name in ("data.json", "figures"):
        src = cache / "reports" / name
        if src.is_dir():
            shutil.copytree(src, repo / "reports" / name, dirs_exist_ok=True)
        else:
            shutil.copy(src, repo / "reports" / name)
    return repo


def repeats(quick: int, long: int) -> int:
    """How many rounds a repeated fault test runs: ``quick`` in the suite, ``long`` under ``tests/reliability.py``."""
    return long if os.environ.get("FMNIST_RELIABILITY_LOG") else quick


def record_reliability(check: str, figures: dict) -> None:
    """Add a check's figures to the reliability report (``tests/reliability.py`` sets the file); else nothing."""
    if path := os.environ.get("FMNIST_RELIABILITY_LOG"):
        with open(path, "a") as fh:
            fh.write(json.dumps({"check": check, **figures}) + "\n")


def trained_figure(name: str, value: float) -> float:
    """``value``, a figure a trained model reached that a test holds against a threshold, returned as it is.

    With ``FMNIST_FIGURES_LOG`` set, it is also added to that file (one JSON line), so that one run of the suite lists
    every such figure on its machine: docs/development.md has them per CPU family, and the command that lists them.
    """
    if path := os.environ.get("FMNIST_FIGURES_LOG"):
        with open(path, "a") as fh:  # one short line per write: the xdist workers' lines do not interleave
            fh.write(json.dumps({"figure": name, "value": float(value)}) + "\n")
    return value


def wait_for_url(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``url`` until it answers; fail with the end of ``log`` if ``proc`` dies or time runs out."""
    try:
        processes.wait_for_url(url, url, proc.pid, log, timeout)
    except processes.StackError as exc:
        raise AssertionError(str(exc)) from None


@contextmanager
def fmnist_serve(cwd: Path, env: dict[str, str], log: Path, *args: str) -> Iterator[int]:
    """``fmnist serve --port <free port> <args>`` in ``cwd``, logging to ``log``; yields the port once /ping answers, and
    stops the server and its children after the block."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", "--port", str(port), *args], cwd=cwd, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: stopped with its children
        )  # fmt: skip
    try:
        wait_for_url(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        yield port
    finally:
        processes.stop_trees(proc.pid)
        proc.wait()


def mlflow_client(repo: Path):
    """A client on the project copy's own store, ``<repo>/mlflow.db``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo.resolve() / 'mlflow.db'}")


@pytest.fixture
def prepared_project(project: Path, prepared_cache: Path) -> Path:
    """``project`` with ``download`` and ``prepare`` already reproduced (from the session cache)."""
    return checkout_prepared(project, prepared_cache)


# --- servers on 127.0.0.1: PostgreSQL, and MLflow on it ---------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster (Debian's ``postgresql`` package) on 127.0.0.1, as ``fmnist stack`` starts one; yields its URL."""
    from pipeline.stack import postgres as pg

    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("PostgreSQL is not installed: apt-get install -y postgresql (CI installs it)")
    root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))  # not under pytest's root-only temp dir: postgres must reach it
    root.chmod(0o755)
    info = pg.start(root, databases=())
    try:
        yield f"postgresql://postgres@127.0.0.1:{info['port']}/postgres"
    finally:
        pg.stop(info)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with the PostgreSQL backend store, serving its artifacts from a local folder."""
    import tiny_repro  # it imports this module

    work = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), work / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        postgres,
        "--artifacts-destination",
        str(work / "artifacts"),
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with open(log, "w") as out:
        env = tiny_repro.project_env(**MLFLOW_SERVER)
        server = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_url(f"http://127.0.0.1:{port}/health", 120, server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


class AlertReceiver:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST: where ``json://`` alerts are sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the handler's API)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> list[dict]:
        """The alerts received, once there are ``n`` of them (or ``timeout`` seconds have passed)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


@pytest.fixture(scope="module")
def alert_receiver() -> Iterator[AlertReceiver]:
    receiver = AlertReceiver()
    yield receiver
    receiver.server.shutdown()
