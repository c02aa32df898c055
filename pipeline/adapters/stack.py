"""The team stack on one machine: the servers a team shares, started on 127.0.0.1 with all state under one folder.

- PostgreSQL (Debian's ``postgresql``; ``initdb`` into ``<root>/postgres``): databases ``mlflow`` and
  ``prefect``, and the registry's shared lock;
- an S3 endpoint: ``moto_server``, standing in for S3 or MinIO (same client settings: an endpoint
  URL and keys), with the buckets ``fmnist-mlflow`` (MLflow's artifacts) and ``fmnist-dvc`` (the
  DVC remote). It keeps objects in memory: they are gone when it stops;
- an MLflow server on the PostgreSQL, serving artifacts from the S3 bucket (``--serve-artifacts``);
- a Prefect server on the PostgreSQL;
- N Prefect process workers on the pool ``fmnist-process``, each in its own git clone
  (``FMNIST_CLONE``), one flow run at a time, optionally pinned to one core each.

Every process is recorded in ``<root>/stack.json`` (pid, port, log), so ``status`` and ``down``
find them from any shell. Production differences (TLS, auth, real S3, managed PostgreSQL) are in
docs/team.md.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.core.errors import PipelineError

STATE = "stack.json"
BUCKETS = ("fmnist-mlflow", "fmnist-dvc")
POOL = "fmnist-process"
KEYS = {"AWS_ACCESS_KEY_ID": "fmnist", "AWS_SECRET_ACCESS_KEY": "fmnist-secret", "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(PipelineError):
    """The stack cannot start, or is not there to stop."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise StackError("PostgreSQL is not installed; apt-get install -y postgresql")
    return Path(found[-1]).parent


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def environment(state: dict) -> dict[str, str]:
    """What a shell, a worker or a test exports to use the stack."""
    pg, s3 = state["postgres"]["port"], state["s3"]["port"]
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{state['mlflow']['port']}",
        "PREFECT_API_URL": f"http://127.0.0.1:{state['prefect']['port']}/api",
        "FMNIST_REGISTRY_LOCK_URL": f"postgresql://postgres@127.0.0.1:{pg}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}",
        **KEYS,
    }


CLIENT_ENV = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "FMNIST_PARENT_RUN_ID")  # the servers are not clients
HEALTH = {"s3": "/moto-api/", "mlflow": "/health", "prefect": "/api/health"}  # what each server answers when up


def _start(name: str, cmd: list[str], root: Path, env: dict, cwd: Path | None = None) -> dict:
    """Start ``cmd`` in its own session, logging to ``<root>/logs/<name>.log``; returns what :func:`start_server` needs again."""
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd or root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    own = {k: v for k, v in env.items() if os.environ.get(k) != v}
    return {"pid": proc.pid, "log": str(log), "cmd": cmd, "env": own, "cwd": str(cwd or root)}


def _wait_http(name: str, url: str, info: dict, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(info["pid"]):
            raise StackError(f"{name} exited while starting; see {info['log']}:\n{Path(info['log']).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise StackError(f"{name} did not answer {url} in {timeout:.0f} s; see {info['log']}")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def start_postgres(root: Path, databases: tuple[str, ...] = ("mlflow", "prefect")) -> dict:
    """A new PostgreSQL cluster in ``<root>/postgres`` on 127.0.0.1 (trust auth) with ``databases``; returns its pid, port, log."""
    bindir, data, port = _pg_bin(), root / "postgres", _free_port()
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    log = root / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(log.parent, "postgres", "postgres")
    start = [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-l", str(log), "-w", "start"]
    proc = subprocess.run(_as_postgres(start), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"PostgreSQL did not start: {proc.stdout}{proc.stderr}")
    for db in databases:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db], check=True, capture_output=True
        )
    pid = int((data / "db" / "postmaster.pid").read_text().split()[0])
    return {"pid": pid, "port": port, "log": str(log), "data": str(data / "db"), "bin": str(bindir)}


def _s3(root: Path, env: dict) -> dict:
    port = _free_port()
    info = _start("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], root, env) | {"port": port}
    _wait_http("the S3 endpoint", f"http://127.0.0.1:{port}{HEALTH['s3']}", info)
    _buckets(port)
    return info


def _buckets(port: int) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **{k.lower(): v for k, v in KEYS.items() if "KEY" in k})
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)


def stop(root: Path, name: str) -> None:
    """Stop one process of the stack (``s3``, ``mlflow``, ``prefect``, ``worker-<i>``), as an outage would.

    :func:`start_server` brings a server back.
    """
    state = load(root)
    found = state.get(name) or next((w for w in state.get("workers", []) if Path(w["log"]).stem == name), None)
    if not found:
        raise StackError(f"the stack has no process {name!r}: see `fmnist stack status`")
    _stop(found["pid"])


def start_server(root: Path, name: str) -> None:
    """Start a stopped server again, with the command, environment and port it had; waits until it answers.

    The S3 stand-in keeps its objects in memory: started again, it has empty buckets (real S3 and MinIO keep them).
    """
    root = root.resolve()
    state = load(root)
    info = state[name]
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV} | info["env"]
    state[name] = info | _start(name, info["cmd"], root, env, Path(info["cwd"]))
    _save(root, state)
    _wait_http(f"the {name} server", f"http://127.0.0.1:{info['port']}{HEALTH[name]}", state[name])
    if name == "s3":
        _buckets(info["port"])


def up(root: Path, repo: Path, workers: int, pin: bool = False) -> dict:
    """Start every server and ``workers`` workers; returns the state written to ``<root>/stack.json``."""
    root = root.resolve()
    if (root / STATE).exists():
        raise StackError(
            f"{root / STATE} exists: the stack is up (fmnist stack status) or was not taken down (fmnist stack down)"
        )
    root.mkdir(parents=True, exist_ok=True)
    state: dict = {"root": str(root), "repo": str(repo)}
    try:
        state["postgres"] = start_postgres(root)
        _save(root, state)
        base = os.environ | KEYS
        state["s3"] = _s3(root, base)
        _save(root, state)
        s3_url = f"http://127.0.0.1:{state['s3']['port']}"
        env = {k: v for k, v in base.items() if k not in CLIENT_ENV} | {
            "MLFLOW_S3_ENDPOINT_URL": s3_url,
            "AWS_ENDPOINT_URL": s3_url,
        }
        pg = f"postgresql://postgres@127.0.0.1:{state['postgres']['port']}"
        port = _free_port()
        mlflow_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{pg}/mlflow"]
        mlflow_cmd += ["--artifacts-destination", f"s3://{BUCKETS[0]}/artifacts", "--serve-artifacts"]
        mlflow_cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        state["mlflow"] = _start("mlflow", mlflow_cmd, root, env) | {"port": port}
        _save(root, state)
        port = _free_port()
        prefect_env = env | {
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"{pg.replace('postgresql:', 'postgresql+asyncpg:')}/prefect",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # else the UI in the browser calls the default port, 4200
        }
        prefect_cmd = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        state["prefect"] = _start("prefect", prefect_cmd, root, prefect_env) | {"port": port}
        _save(root, state)
        _wait_http("the MLflow server", f"http://127.0.0.1:{state['mlflow']['port']}{HEALTH['mlflow']}", state["mlflow"])
        _wait_http("the Prefect server", f"http://127.0.0.1:{state['prefect']['port']}{HEALTH['prefect']}", state["prefect"])
        _dvc_remote(repo, state)
        state["workers"] = _workers(root, repo, workers, env | environment(state), state, pin)
        _save(root, state)
    except BaseException:
        _save(root, state)
        down(root)
        raise
    return state


def _workers(root: Path, repo: Path, n: int, env: dict, state: dict, pin: bool) -> list[dict]:
    """``n`` process workers on the pool, each in its own clone of ``repo`` with the DVC remote, taking one flow run at a time.

    ``pin`` gives worker ``i`` the core ``i - 1`` alone (``taskset``), as if each were a machine of one core.
    """
    if n == 0:
        return []
    subprocess.run(
        [_bin("prefect"), "--no-prompt", "work-pool", "create", POOL, "--type", "process", "--overwrite"],
        env=env | {"PREFECT_HOME": str(root / "prefect-client")},
        check=True,
        capture_output=True,
    )
    started = []
    for i in range(1, n + 1):
        clone = root / "workers" / f"worker-{i}"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
        _dvc_remote(clone, state)
        cmd = [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", f"worker-{i}", "--limit", "1"]
        core = (i - 1) % os.cpu_count()
        cmd = ["taskset", "-c", str(core), *cmd] if pin else cmd
        worker_env = env | {"PREFECT_HOME": str(clone / ".prefect"), "FMNIST_CLONE": str(clone), "FMNIST_WORKER": f"worker-{i}"}
        started.append(
            _start(f"worker-{i}", cmd, root, worker_env, cwd=clone) | {"clone": str(clone)} | ({"core": core} if pin else {})
        )
    return started


def _dvc_remote(repo: Path, state: dict) -> None:
    """The default DVC remote ``stack`` on the S3 endpoint, in the repository's local (uncommitted) config."""
    url, endpoint = f"s3://{BUCKETS[1]}/cache", f"http://127.0.0.1:{state['s3']['port']}"
    for args in (["add", "--local", "-d", "-f", "stack", url], ["modify", "--local", "stack", "endpointurl", endpoint]):
        subprocess.run([_bin("dvc"), "remote", *args], cwd=repo, check=True, capture_output=True)


def _save(root: Path, state: dict) -> None:
    tmp = root / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(root / STATE)


def load(root: Path) -> dict:
    path = root.resolve() / STATE
    if not path.exists():
        raise StackError(f"no stack at {root}: start one with `fmnist stack up`")
    return json.loads(path.read_text())


def status(root: Path) -> list[dict]:
    """One row per process: its name, pid, whether it runs, and what it answers on."""
    state = load(root)
    rows = []
    for name in ("postgres", "s3", "mlflow", "prefect"):
        if name in state:
            info = state[name]
            url = f"postgresql://127.0.0.1:{info['port']}" if name == "postgres" else f"http://127.0.0.1:{info['port']}"
            rows.append({"name": name, "pid": info["pid"], "running": _alive(info["pid"]), "url": url, "log": info["log"]})
    for info in state.get("workers", []):
        name = Path(info["clone"]).name
        rows.append({"name": name, "pid": info["pid"], "running": _alive(info["pid"]), "url": info["clone"], "log": info["log"]})
    return rows


def down(root: Path, purge: bool = False) -> list[str]:
    """Stop every process of the stack (workers first, PostgreSQL last) and drop the repository's ``stack`` remote.

    ``purge`` also removes the folder (the databases, the worker clones and the logs).
    """
    root = root.resolve()
    state = load(root)
    infos = [*state.get("workers", []), *(state[n] for n in ("prefect", "mlflow", "s3") if n in state)]
    running = _stop(*(info["pid"] for info in infos))  # together: one wait for all, not one per process
    stopped = [Path(info["log"]).stem for info in infos if info["pid"] in running]
    if "postgres" in state:
        stop_postgres(state["postgres"])
        stopped.append("postgres")
    subprocess.run([_bin("dvc"), "remote", "remove", "--local", "stack"], cwd=state["repo"], capture_output=True)
    (root / STATE).unlink()
    if purge:
        shutil.rmtree(root, ignore_errors=True)
    return stopped


def stop_postgres(info: dict) -> None:
    """Stop the cluster :func:`start_postgres` started (a fast shutdown: sessions are ended)."""
    subprocess.run(_as_postgres([f"{info['bin']}/pg_ctl", "-D", info["data"], "-m", "fast", "stop"]), capture_output=True)


def _stop(*pids: int, timeout: float = 20) -> set[int]:
    """SIGTERM each process, its group and everything it started (a worker's flow runs have sessions of their own), wait
    for all of them together at most ``timeout`` seconds, then SIGKILL what is left; returns the pids that were running."""
    import psutil  # a DVC dependency

    running, procs = set(), []
    for pid in pids:
        try:
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
        running.add(pid)
        procs += tree
        for p in tree[1:]:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p.pid) for p in procs):  # a zombie has exited: not waited for
        time.sleep(0.2)
    for p in procs:
        if _alive(p.pid):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    return running
