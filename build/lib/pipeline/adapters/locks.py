"""The one lock helper: an exclusive ``flock`` on a file, re-entrant within a process.

Used for the first opening of a SQLite MLflow store, the registry's read-compare-set of the
aliases and the one-retraining-at-a-time rule. The kernel releases a ``flock`` when its holder
exits, even when it crashes or is killed, so a dead holder never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import PipelineError


class LockHeld(PipelineError):
    """Another process holds the lock (only with ``wait=False``); ``holder`` says who, as it wrote itself."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


_held: set[Path] = set()  # locks this process holds: a nested block on the same file passes through


@contextmanager
def exclusive(path: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block; wait for it, or raise :class:`LockHeld` at once.

    The holder writes ``pid <pid> on <host>, since <UTC time>`` into the file, so whoever waits or
    is refused can say who holds it.
    """
    path = Path(path).resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            raise LockHeld(path, fh.read().strip() or "another process") from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        fh.flush()
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)
