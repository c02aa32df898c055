"""Processes and ports on this machine: a free port, a logged server in its own session, waiting for it, stopping trees.

The one home of these helpers: the stack, the tests (``tests/conftest.py``) and the bench
(``benchmarks/serving.py``) use them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from pipeline.core.errors import PipelineError


class StackError(PipelineError):
    """The stack cannot start, or a process of it does not answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def command_line(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it has exited): to tell a recorded process from a reused pid."""
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def spawn(name: str, cmd: list[str], logs: Path, env: dict, cwd: Path) -> dict:
    """Start ``cmd`` in its own session, appending its output to ``<logs>/<name>.log``.

    Returns:
        What is needed to find, stop and start it again: pid, log, command, the environment it has
        beyond this process's own, and its folder.
    """
    log = logs / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    own = {k: v for k, v in env.items() if os.environ.get(k) != v}
    return {"pid": proc.pid, "log": str(log), "cmd": cmd, "env": own, "cwd": str(cwd)}


def wait_for_url(name: str, url: str, pid: int, log: Path, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 2xx or 3xx.

    Raises:
        StackError: ``pid`` exited first (the end of ``log`` is in the message), or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{name} exited while starting; see {log}:\n{tail}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:  # refused, or an HTTP error while it starts
            time.sleep(0.5)
    raise StackError(f"{name} did not answer {url} in {timeout:.0f} s; see {log}")


def stop_trees(*pids: int, timeout: float = 20) -> set[int]:
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
    while time.monotonic() < deadline and any(alive(p.pid) for p in procs):  # a zombie has exited: not waited for
        time.sleep(0.2)
    for p in procs:
        if alive(p.pid):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    return running
