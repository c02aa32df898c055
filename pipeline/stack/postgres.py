"""PostgreSQL for the stack (Debian's ``postgresql``): one cluster under ``<root>/postgres``, on 127.0.0.1 with trust auth.

The cluster outlives ``fmnist stack down``: the next ``up`` starts it again on the same data folder
(``initdb`` only when the folder is new). After an unclean stop, a ``postmaster.pid`` whose process
is gone is removed, and PostgreSQL's own crash recovery replays its log.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.stack.processes import StackError, alive, command_line, free_port


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise StackError("PostgreSQL is not installed: apt-get install -y postgresql")
    return Path(found[-1]).parent


def _clear_stale_pid(data: Path) -> bool:
    """Remove ``postmaster.pid`` when its process is gone or is not a postgres (a reused pid after a reboot)."""
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().split()[0])
    if alive(pid) and any("postgres" in part for part in command_line(pid)[:1]):
        raise StackError(f"PostgreSQL still runs on {data} (pid {pid}): stop it with `fmnist stack down` first")
    pidfile.unlink()
    return True


def start(
    root: Path, databases: tuple[str, ...] = ("mlflow", "prefect", "predictions", "optuna"), port: int | None = None
) -> dict:
    """Start the cluster in ``<root>/postgres`` on ``port`` (default: a free one), creating it when it is new and
    ``databases`` it lacks.

    Returns:
        pid, port, log, data folder and binaries, and whether the cluster is new or ``resumed``.
    """
    bindir, data, port = _bin(), root / "postgres", port or free_port()
    db = data / "db"
    resumed = (db / "PG_VERSION").exists()
    data.mkdir(parents=True, exist_ok=True)
    log = root / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(log.parent, "postgres", "postgres")
    if not resumed:
        shutil.rmtree(db, ignore_errors=True)  # a cluster whose initdb was cut short
        initdb = [str(bindir / "initdb"), "-D", str(db), "-A", "trust", "-U", "postgres"]
        proc = subprocess.run(_as_postgres(initdb), capture_output=True, text=True, cwd=data)
        if proc.returncode != 0:
            raise StackError(f"initdb failed in {db}: {proc.stderr.strip()[-1500:]}")
    stale = _clear_stale_pid(db)
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    cmd = [str(bindir / "pg_ctl"), "-D", str(db), "-o", opts, "-l", str(log), "-w", "-t", "120", "start"]
    proc = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, cwd=data)  # cwd: a folder postgres may enter
    if proc.returncode != 0:  # once more: on a loaded machine the previous shutdown can still be releasing the folder
        time.sleep(3)
        _clear_stale_pid(db)
        proc = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, cwd=data)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise StackError(f"PostgreSQL did not start on {db}: {proc.stdout}{proc.stderr}\n{tail}")
    for name in databases:  # on a resumed cluster too: one made before a database was added to the stack lacks it
        create = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name]
        made = subprocess.run(create, capture_output=True, text=True, cwd=data)
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise StackError(f"createdb {name} failed on port {port}: {made.stderr.strip()}")
    pid = int((db / "postmaster.pid").read_text().split()[0])
    return {"pid": pid, "port": port, "log": str(log), "data": str(db), "bin": str(bindir), "resumed": resumed} | (
        {"stale_pid_removed": True} if stale else {}
    )


def stop(info: dict) -> None:
    """Stop the cluster :func:`start` started (a fast shutdown: sessions are ended, the data folder stays)."""
    cmd = [f"{info['bin']}/pg_ctl", "-D", info["data"], "-m", "fast", "-w", "-t", "120", "stop"]
    subprocess.run(_as_postgres(cmd), capture_output=True, cwd=Path(info["data"]).parent)
