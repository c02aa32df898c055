"""Two promotions at once: long-lived gate processes that start each round at the same moment.

Used by ``test_promote.py`` (two processes on one checkout and its SQLite store) and
``test_registry_shared.py`` (two clones on one MLflow server, with and without the lock shared
in PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tiny_repro

from pipeline.adapters.mlflow import registry

WORKER = textwrap.dedent(
    """
    # One side of the promotion race: waits for go-<round>, runs the gate, writes done-<round>-<version>.
    # argv[5] seconds: how long this side waits between its decision and its first alias move, which
    # widens the read-compare-set window. go-<round> holds the round's settings as JSON: "lock" false
    # runs the gate without the registry lock; "env" sets (a string) or removes (null) variables.
    import contextlib, dataclasses, json, os, random, sys, time, traceback
    from pathlib import Path
    from pipeline.adapters import leases
    from pipeline.adapters.mlflow import registry
    from pipeline.adapters.paths import Paths
    from pipeline.core.config import load_params
    from pipeline.services import promotion

    control, version, paths, hold = Path(sys.argv[1]), sys.argv[2], Paths(Path(sys.argv[3])), float(sys.argv[5])
    move_alias, registry_lock, moved = registry.move_alias, promotion.registry_lock, []

    def slow_move_alias(name, alias, to, *args, **kwargs):
        if not moved:
            time.sleep(hold)
        moved.append(alias)
        return move_alias(name, alias, to, *args, **kwargs)

    registry.move_alias = slow_move_alias
    params = load_params()
    params = dataclasses.replace(params, registry=dataclasses.replace(params.registry, **json.loads(sys.argv[4])))
    (control / f"ready-{version}").touch()
    for round_ in range(1000):
        go = control / f"go-{round_}"
        while not go.exists():
            if (control / "stop").exists():
                sys.exit(0)
            time.sleep(0.002)
        settings = json.loads(go.read_text())
        for key, value in settings.get("env", {}).items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        time.sleep(random.uniform(0, 0.05))  # either side may reach the lock first
        moved.clear()
        promotion.registry_lock = registry_lock if settings["lock"] else (lambda name, paths: contextlib.nullcontext(leases.LOCAL))
        try:
            result = promotion.gate(params, paths, version)
        except Exception:
            result = {"error": traceback.format_exc()}
        tmp = control / f".done-{round_}-{version}"
        tmp.write_text(json.dumps(result))
        tmp.rename(control / f"done-{round_}-{version}")
    """
)

HOLD_S = 2.0  # the worse side waits this long between its decision and moving the aliases


def reset(name: str) -> None:
    """No aliases: both sides of the next round start from no champion."""
    from pipeline.adapters.mlflow.store import client

    for alias in registry.aliases(name):
        client().delete_registered_model_alias(name, alias)


@contextmanager
def racers(control: Path, sides: list[tuple[Path, str, float]], model: str, root: str, env: dict) -> Iterator:
    """Start one worker per ``(checkout, version, hold)``; yield ``race(settings) -> (champion after, both records)``.

    The race is about the lock, not the rules: any gain promotes, and there is no floor.
    """
    overrides = json.dumps({"model_name": model, "recall_tolerance": 1.0, "floor": 0.0})
    procs, logs = [], []
    for cwd, version, hold in sides:
        log = open(control / f"worker-{version}.log", "w")
        cmd = [sys.executable, "-c", WORKER, str(control), version, root, overrides, str(hold)]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=tiny_repro.project_env(**env), stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    rounds = iter(range(1000))
    versions = [version for _, version, _ in sides]

    def race(settings: dict) -> tuple[str | None, list[dict]]:
        reset(model)
        round_ = next(rounds)
        done = [control / f"done-{round_}-{v}" for v in versions]
        _wait(lambda: all((control / f"ready-{v}").exists() for v in versions), procs, control)
        (control / f".go-{round_}").write_text(json.dumps(settings))
        (control / f".go-{round_}").rename(control / f"go-{round_}")
        _wait(lambda: all(d.exists() for d in done), procs, control)
        records = [json.loads(d.read_text()) for d in done]
        for record in records:
            assert "error" not in record, record.get("error")
        return registry.alias_version(model, "champion"), records

    try:
        yield race
    finally:
        (control / "stop").touch()
        for proc, log in zip(procs, logs):
            proc.terminate()  # idle between rounds; TensorFlow can take seconds to exit on its own
            proc.wait()
            log.close()


def _wait(condition, procs, control: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text()[-2000:] for p in control.glob("worker-*.log"))
                raise AssertionError(f"a race worker exited with {proc.returncode}:\n{logs}")
        assert time.monotonic() < deadline, f"race workers stalled for {timeout} s"
        time.sleep(0.02)
