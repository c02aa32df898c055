"""Traffic for a model server on loopback, and a registry to swap on: shared by the serving bench, the soak and the tests.

- :class:`Stream`: single-image requests one after another on one kept-alive connection, each
  answer kept with its time, status, ``X-Model-Version`` and latency;
- :func:`scratch_registry`: a copy of a SQLite MLflow store with a second version of the same
  model (the same files), so that ``@champion`` can move between two versions without touching
  the project's registry;
- :func:`swap`: ``@champion`` moved under a stream, timed until the server answers with the new version.
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import NamedTuple

from pipeline.commands.serve import ALIAS


class Answer(NamedTuple):
    at: float  # time.monotonic() when the answer arrived
    status: int  # HTTP status; 0: the request failed (connection refused or reset)
    version: str | None  # X-Model-Version (the error, for status 0)
    seconds: float  # the request's latency


class Stream(threading.Thread):
    """Requests of one body, back to back on one kept-alive connection, until stopped (at most ``limit`` or ``seconds``)."""

    def __init__(
        self,
        port: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        path: str = "/invocations",
        limit: int = 20_000,
        seconds: float = 240,
    ):
        super().__init__(daemon=True)
        self.port, self.body, self.path, self.limit, self.seconds = port, body, path, limit, seconds
        self.headers = headers or {"Content-Type": "application/json"}
        self.answers: list[Answer] = []
        self.done = threading.Event()

    def run(self) -> None:
        conn, deadline = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60), time.monotonic() + self.seconds
        while not self.done.is_set() and len(self.answers) < self.limit and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                conn.request("POST", self.path, body=self.body, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                status, version = resp.status, resp.getheader("X-Model-Version")
            except (OSError, http.client.HTTPException) as exc:  # a failed request is an answer too: status 0
                status, version = 0, repr(exc)
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            now = time.monotonic()
            self.answers.append(Answer(now, status, version, now - start))

    def stop(self, timeout: float = 30) -> None:
        self.done.set()
        self.join(timeout)

    def wait_for(self, version: str, since: float, timeout: float) -> float:
        """Seconds from ``since`` to the first answer by ``version`` after it.

        Raises:
            TimeoutError: no such answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((a.at for a in list(self.answers) if a.at >= since and a.version == version), None)
            if found is not None:
                return found - since
            time.sleep(0.05)
        raise TimeoutError(f"no answer by version {version} within {timeout} s; last: {self.answers[-3:]}")


def scratch_registry(db: Path, folder: Path, name: str, version: str) -> tuple[str, str]:
    """Copy the SQLite store ``db`` into ``folder``, register ``name``'s ``version`` again there (its files, tags and
    logged model) and point ``@champion`` at ``version``.

    Returns:
        The copy's tracking URI and the new version.
    """
    from mlflow.tracking import MlflowClient

    from benchmarks.common import global_tracking_uri

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    one = client.get_model_version(name, version)
    model_id = one.source.removeprefix("models:/") if one.source.startswith("models:/") else None
    with global_tracking_uri(uri):  # MLflow resolves a models:/<model id> source on the global store, not the client's
        other = client.create_model_version(name, one.source, run_id=one.run_id, tags=one.tags, model_id=model_id).version
    client.set_registered_model_alias(name, ALIAS, version)
    return uri, str(other)


def swap(stream: Stream, uri: str, name: str, version: str, timeout: float) -> dict:
    """Move ``@champion`` to ``version`` in the store at ``uri`` while ``stream`` runs; wait for the first answer by it.

    Returns:
        ``to``, ``seconds`` (alias moved to first answer by ``version``), and the requests answered meanwhile with their
        statuses and worst latency.
    """
    from mlflow.tracking import MlflowClient

    moved = time.monotonic()
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(name, ALIAS, version)
    seconds = stream.wait_for(version, moved, timeout)
    during = [a for a in list(stream.answers) if moved <= a.at <= moved + seconds]
    return {
        "to": version,
        "seconds": round(seconds, 2),
        "requests": len(during),
        "failed": sum(a.status != 200 for a in during),
        "max_ms": round(1000 * max((a.seconds for a in during), default=0), 1),
    }


def latency_ms(answers: list[Answer], q: float = 0.5) -> float:
    """The ``q`` quantile of the answers' latencies, in ms."""
    times = sorted(a.seconds for a in answers)
    return round(1000 * (statistics.quantiles(times, n=100)[int(q * 100) - 1] if len(times) > 1 else times[0]), 2)
