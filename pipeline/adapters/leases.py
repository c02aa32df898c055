"""A lock shared by every machine that reaches one PostgreSQL, held on a lease.

The registry's read-compare-set of the aliases must be serialised across machines when they share
an MLflow server, and a file lock only serialises one checkout. This lock is an advisory lock in a
PostgreSQL server (the one behind MLflow, or any other that every machine reaches). Its lease: a
dead holder's lock ends with its connection, at once; a holder that is alive but silent (stopped,
hung, cut off) loses it after ``lease_s`` seconds without a renewal. Before each change it makes
under the lock, the holder checks that the lease is still its own (:meth:`Lease.check`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.adapters.locks import LockHeld
from pipeline.core.errors import PipelineError


class Lease:
    """What a lock holder has: ``check()`` raises :class:`LeaseLost` once the lock is no longer its own."""

    def check(self) -> None:
        """A local flock is held until its holder lets go or dies: nothing to check."""


class LeaseLost(PipelineError):
    """The shared lock's lease expired (its holder stopped renewing it) or its connection died."""


def _key(name: str) -> int:
    """A PostgreSQL advisory-lock key (signed 64-bit) for a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class _PostgresLease(Lease):
    def __init__(self, conn, name: str, lease_s: float):
        self._conn, self._name, self._lease_s = conn, name, lease_s

    def check(self) -> None:
        """Renew the lease; raise :class:`LeaseLost` if PostgreSQL already ended it."""
        try:
            self._conn.execute("SELECT 1")
        except Exception as exc:  # psycopg.OperationalError and kin: the server closed the session
            raise LeaseLost(
                f"lost the lock {self._name!r}: its lease of {self._lease_s:g} s expired or its connection died ({exc}); "
                "nothing was changed after that"
            ) from None


@contextmanager
def shared(url: str, name: str, *, lease_s: float = 30.0, wait_s: float = 600.0, hold_s: float = 600.0) -> Iterator[Lease]:
    """Hold the lock ``name`` in the PostgreSQL at ``url`` (an advisory lock) for the block, on a lease.

    Every machine that reaches the database shares the lock, with no shared file. A transaction
    holds it (``pg_advisory_xact_lock``), so it ends with the session: at once when the holder dies
    (its connection closes), and after ``lease_s`` seconds when the holder is alive but silent
    (``idle_in_transaction_session_timeout``): a thread renews the lease every ``lease_s / 3``
    seconds while the holder runs, for at most ``hold_s`` seconds, so a holder stuck in one call
    loses it too. Before a change that must happen under the lock, call the yielded lease's
    ``check()``. Waits at most ``wait_s`` seconds for the lock, then raises :class:`LockHeld`.
    """
    import psycopg

    who = f"pid {os.getpid()} on {socket.gethostname()}"
    try:
        conn = psycopg.connect(url, connect_timeout=10, application_name=f"fmnist: {who}"[:63])  # 63: PostgreSQL's limit
    except psycopg.OperationalError as exc:
        raise PipelineError(f"cannot reach the lock server for {name!r} at {_safe(url)}: {exc}".strip()) from None
    stop = threading.Event()
    try:
        conn.execute(f"SET idle_in_transaction_session_timeout = {int(lease_s * 1000)}")
        conn.execute(f"SET lock_timeout = {int(wait_s * 1000)}")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key(name),))
        except psycopg.errors.LockNotAvailable:
            raise LockHeld(name, _holder(url, name)) from None
        lease = _PostgresLease(conn, name, lease_s)
        deadline = time.monotonic() + hold_s
        renew = threading.Thread(target=_renew, args=(lease, stop, lease_s / 3, deadline), daemon=True, name=f"lease {name}")
        renew.start()
        yield lease
    finally:
        stop.set()
        try:
            conn.close()  # ends the transaction, and with it the lock
        except Exception:
            pass


def _renew(lease: _PostgresLease, stop: threading.Event, every: float, deadline: float) -> None:
    while not stop.wait(every) and time.monotonic() < deadline:
        try:
            lease.check()
        except LeaseLost:
            return


def _holder(url: str, name: str) -> str:
    """Who holds the advisory lock ``name``, as its session named itself, or 'another session'."""
    import psycopg

    key = _key(name) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
    query = (
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.granted AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1"
    )
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(query, (key >> 32, key & 0xFFFFFFFF)).fetchone()
    except psycopg.Error:
        row = None
    return row[0].removeprefix("fmnist: ") if row else "another session"


def _safe(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


LOCAL = Lease()  # the lease of a local flock: it cannot expire
