"""``up``, ``down`` and ``status`` of the stack, and one server stopped and started again (the fault drills).

Every process is recorded in ``<root>/stack.json`` (pid, port, log, command), so ``status`` and
``down`` find them from any shell. All state lives under ``<root>``: PostgreSQL's data folder,
the copy of the buckets, the Prefect home, the workers' clones and the logs. ``down`` keeps it, so
the next ``up`` resumes the same registry, runs and DVC remote on new ports; ``down --purge``
removes it. ``up`` after an unclean stop (processes killed, the machine rebooted) ends what is
left of the old processes and starts again on the same state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.adapters import alerts
from pipeline.adapters.files import atomic_write_text
from pipeline.core.environment import MLFLOW_SERVER, PREDICTIONS_URL, REGISTRY_LOCK_URL, TUNE_STORAGE, without_clients
from pipeline.stack import monitoring, postgres, s3
from pipeline.stack.processes import StackError, alive, command_line, free_port, spawn, stop_trees, wait_for_url
from pipeline.stack.workers import dvc_remote, remove_dvc_remote, start_workers

STATE = "stack.json"
SERVERS = ("s3", "mlflow", "prefect", "relay", "alertmanager", "prometheus")  # in the order they start
HEALTH = {"s3": s3.HEALTH, "mlflow": "/health", "prefect": "/api/health", **monitoring.HEALTH}  # each answers when up


def environment(state: dict) -> dict[str, str]:
    """What a shell, a worker or a test exports to use the stack."""
    pg, endpoint = state["postgres"]["port"], f"http://127.0.0.1:{state['s3']['port']}"
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{state['mlflow']['port']}",
        "PREFECT_API_URL": f"http://127.0.0.1:{state['prefect']['port']}/api",
        REGISTRY_LOCK_URL: f"postgresql://postgres@127.0.0.1:{pg}/mlflow",
        PREDICTIONS_URL: f"postgresql://postgres@127.0.0.1:{pg}/predictions",
        TUNE_STORAGE: f"postgresql://postgres@127.0.0.1:{pg}/optuna",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
        **s3.KEYS,
        **monitoring.environment(Path(state["root"])),
    }


def _save(root: Path, state: dict) -> None:
    atomic_write_text(root / STATE, json.dumps(state, indent=2))


def load(root: Path) -> dict:
    """The state ``up`` recorded; StackError when no stack was started in ``root`` (or it was taken down)."""
    path = root.resolve() / STATE
    if not path.exists():
        raise StackError(f"no stack runs in {root}: start one with `fmnist stack up`")
    return json.loads(path.read_text())


def is_up(root: Path) -> bool:
    return (root.resolve() / STATE).exists()


def _ours(info: dict) -> bool:
    """Whether the recorded process still runs, and is the one recorded (not a pid reused since, after a reboot)."""
    return alive(info["pid"]) and set(info["cmd"][-3:]) <= set(command_line(info["pid"]))


def _processes(state: dict) -> list[dict]:
    """The supervised processes, in the order they stop: workers first, then the servers that depend on the others."""
    return [*state.get("workers", []), *(state[n] for n in reversed(SERVERS) if n in state)]


def _server_env() -> dict[str, str]:
    return without_clients(os.environ | s3.KEYS)  # the servers are not clients of another store


def _mlflow(root: Path, env: dict, pg: str) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{pg}/mlflow"]
    cmd += ["--artifacts-destination", f"s3://{s3.BUCKETS[0]}/artifacts", "--serve-artifacts"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--expose-prometheus", str(root / "mlflow-metrics")]
    return spawn("mlflow", cmd, root / "logs", env | MLFLOW_SERVER, root) | {"port": port}


def _prefect(root: Path, env: dict, pg: str) -> dict:
    port = free_port()
    env = env | {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"{pg.replace('postgresql:', 'postgresql+asyncpg:')}/prefect",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_METRICS_ENABLED": "true",  # /api/metrics, for the stack's Prometheus
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # else the UI in the browser calls the default port, 4200
    }
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return spawn("prefect", cmd, root / "logs", env, root) | {"port": port}


def _recover(root: Path) -> list[str]:
    """After an unclean stop: end what is left of the recorded processes and forget the record; returns their names."""
    state = json.loads((root / STATE).read_text())
    left = [info for info in _processes(state) if _ours(info)]
    stop_trees(*(info["pid"] for info in left))
    if "postgres" in state and alive(state["postgres"]["pid"]):
        postgres.stop(state["postgres"])
    (root / STATE).unlink()
    return [Path(info["log"]).stem for info in left]


def up(root: Path, repo: Path, workers: int, pin: bool = False) -> dict:
    """Start every server and ``workers`` workers on the state in ``root`` (new, or kept by the last ``down``).

    Returns:
        The state written to ``<root>/stack.json``: each process, and ``resumed`` (the data of an earlier stack),
        ``recovered`` (the processes an unclean stop left, ended first) and ``s3.restored`` (objects put back).

    Raises:
        ConfigError: ``FMNIST_ALERTS_URL`` is set but not an apprise URL (nothing is started).
        StackError: the stack in ``root`` runs already, or a server did not start (what was started is stopped).
    """
    alerts.destination()  # the relay's destination, refused here rather than in its log
    root = root.resolve()
    recovered = []
    if is_up(root):
        state = load(root)
        if all(_ours(info) for info in _processes(state)) and alive(state.get("postgres", {}).get("pid", 0)):
            raise StackError(f"the stack in {root} is up already: see `fmnist stack status`, or `fmnist stack down` first")
        recovered = _recover(root)
    root.mkdir(parents=True, exist_ok=True)
    state: dict = {"root": str(root), "repo": str(repo), "recovered": recovered}
    try:
        state["postgres"] = postgres.start(root)
        state["resumed"] = state["postgres"]["resumed"]
        _save(root, state)
        env = _server_env()
        state["s3"] = s3.start(root, env)
        _save(root, state)
        state["s3"]["restored"] = s3.restore(root, state["s3"]["port"])
        endpoint = f"http://127.0.0.1:{state['s3']['port']}"
        env |= {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint}
        pg = f"postgresql://postgres@127.0.0.1:{state['postgres']['port']}"
        state["mlflow"] = _mlflow(root, env, pg)
        _save(root, state)
        state["prefect"] = _prefect(root, env, pg)
        _save(root, state)
        _watchers(root, Path(repo), env, state)
        dvc_remote(repo, s3.BUCKETS[1], endpoint)
        state["workers"] = start_workers(root, repo, workers, env | environment(state), s3.BUCKETS[1], endpoint, pin)
        _save(root, state)
    except BaseException:
        _save(root, state)
        down(root, repo)
        raise
    return state


def _watchers(root: Path, repo: Path, env: dict, state: dict) -> None:
    """The alert relay, and (if installed) Alertmanager and a Prometheus scraping the servers; once MLflow and Prefect
    answer, Prefect's alerting automations (:mod:`pipeline.orchestration.automations`)."""
    state["relay"] = monitoring.start_relay(root, env)
    lacking = monitoring.missing()
    state["monitoring"] = f"not installed: {', '.join(lacking)} ({monitoring.INSTALL})" if lacking else "on"
    if not lacking:
        state["alertmanager"] = monitoring.start_alertmanager(root, env, state["relay"]["port"])
        scraped = {"mlflow": (state["mlflow"]["port"], "/metrics"), "prefect": (state["prefect"]["port"], "/api/metrics")}
        state["prometheus"] = monitoring.start_prometheus(root, env, repo, scraped, state["alertmanager"]["port"])
    _save(root, state)
    for name in SERVERS[1:]:
        if name in state:
            info = state[name]
            wait_for_url(f"the {name} server", f"http://127.0.0.1:{info['port']}{HEALTH[name]}", info["pid"], Path(info["log"]))
    relay = f"http://127.0.0.1:{state['relay']['port']}"
    cmd = [sys.executable, "-m", "pipeline.orchestration.automations", relay]
    installed = subprocess.run(cmd, env=env | environment(state), cwd=repo, capture_output=True, text=True)
    if installed.returncode:
        raise StackError(f"could not install the Prefect automations: {installed.stderr.strip()[-2000:]}")
    state["automations"] = installed.stdout.splitlines()


def down(root: Path, repo: Path, purge: bool = False) -> dict:
    """Stop every process of the stack (workers first, PostgreSQL last), keeping its state for the next ``up``.

    The buckets are copied into ``<root>/s3/`` first (:func:`pipeline.stack.s3.save`). A stack that is not running
    (taken down already, or never started) is not an error. ``purge`` also removes ``root`` and the repository's
    ``stack`` DVC remote.

    Returns:
        ``stopped`` (names), ``saved`` (the bucket copy's counts, if the endpoint answered) and ``running`` (whether
        there was a stack to stop).
    """
    root = root.resolve()
    report: dict = {"stopped": [], "saved": None, "running": is_up(root)}
    if report["running"]:
        state = load(root)
        repo = Path(state["repo"])
        if "s3" in state and "restored" in state["s3"] and _ours(state["s3"]):  # never over the copy with a bucket not refilled
            report["saved"] = s3.save(root, state["s3"]["port"])
        procs = _processes(state)
        ours = [info for info in procs if _ours(info)]
        stop_trees(*(info["pid"] for info in ours))  # together: one wait for all, not one per process
        report["stopped"] = [Path(info["log"]).stem for info in ours]
        if "postgres" in state and alive(state["postgres"]["pid"]):
            postgres.stop(state["postgres"])
            report["stopped"].append("postgres")
        (root / STATE).unlink()
    remove_dvc_remote(repo)
    if purge:
        shutil.rmtree(root, ignore_errors=True)
    return report


def status(root: Path) -> list[dict]:
    """One row per process: its name, pid, whether it runs, and what it answers on."""
    state = load(root)
    rows = []
    for name in ("postgres", *SERVERS):
        if name in state:
            info = state[name]
            url = f"postgresql://127.0.0.1:{info['port']}" if name == "postgres" else f"http://127.0.0.1:{info['port']}"
            running = alive(info["pid"]) if name == "postgres" else _ours(info)
            rows.append({"name": name, "pid": info["pid"], "running": running, "url": url, "log": info["log"]})
    for info in state.get("workers", []):
        rows.append(
            {
                "name": Path(info["clone"]).name,
                "pid": info["pid"],
                "running": _ours(info),
                "url": info["clone"],
                "log": info["log"],
            }
        )
    return rows


def stop(root: Path, name: str) -> None:
    """Stop one process of the stack (``s3``, ``mlflow``, ``prefect``, ``worker-<i>``), as an outage would.

    :func:`start_server` brings a server back.
    """
    state = load(root)
    found = state.get(name) or next((w for w in state.get("workers", []) if Path(w["log"]).stem == name), None)
    if not found:
        raise StackError(f"the stack has no process {name!r}: see `fmnist stack status`")
    stop_trees(found["pid"])


def start_server(root: Path, name: str) -> None:
    """Start a stopped server (or worker) again, with the command, environment and port it had; waits until it answers.

    Started again this way, the S3 endpoint has empty buckets, as after an outage that lost its disk: the drill of a
    lost artifact store. (``down`` and ``up`` keep the objects.)
    """
    root = root.resolve()
    state = load(root)
    workers = [Path(w["log"]).stem for w in state.get("workers", [])]
    if name in workers:  # a worker: its own clone, polling the pool again; no address to wait for
        i = workers.index(name)
        info = state["workers"][i]
        state["workers"][i] = info | spawn(name, info["cmd"], root / "logs", _server_env() | info["env"], Path(info["cwd"]))
        _save(root, state)
        return
    info = state[name]
    if name == "s3":
        state[name] = s3.start(root, _server_env() | info["env"], port=info["port"]) | {"restored": 0}
    else:
        env = _server_env() | info["env"]
        state[name] = info | spawn(name, info["cmd"], root / "logs", env, Path(info["cwd"]))
    _save(root, state)
    wait_for_url(f"the {name} server", f"http://127.0.0.1:{info['port']}{HEALTH[name]}", state[name]["pid"], Path(info["log"]))
