"""Runs left RUNNING by a killed process: tell them from live ones, and mark them FAILED.

Each variant run is tagged ``fmnist.process`` = ``<host>/<pid>:<start time>``; the start time
(from ``/proc``) tells a reused pid from the process that tagged the run.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def process_tag(pid: int) -> str | None:
    """``<host>/<pid>:<start time>`` of a live process on this host, or None if it has exited."""
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
    return pid.isdigit() and process_tag(int(pid)) == tag


def fail_orphans(c: MlflowClient, exp: str, variant: str, keep: str | None) -> None:
    """Mark runs of ``variant`` left RUNNING by a killed process as FAILED (concurrent live ones are left alone)."""
    stale = c.search_runs([exp], f"tags.`fmnist.variant` = '{variant}' and attributes.status = 'RUNNING'")
    for run in stale:
        if run.info.run_id != keep and not _still_running(run):
            c.set_terminated(run.info.run_id, "FAILED")
            c.set_tag(run.info.run_id, "fmnist.failure", "orphaned: its process died; marked FAILED at the next start")
            log.warning("run %s of %s was left RUNNING by a killed process: marked FAILED", run.info.run_id, variant)
