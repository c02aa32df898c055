"""The prediction log of ``fmnist serve``: one record per served image, written in batches by a thread of its own.

Where it goes (:func:`where`): the PostgreSQL that ``FMNIST_PREDICTIONS_URL`` names (the team stack sets it;
:mod:`pipeline.adapters.prediction_db`), or else files under ``data/predictions/`` (:class:`Files`).
The records are the same in both, and :func:`open_store` reads either for ``fmnist monitor``.

Files under ``data/predictions/`` (git-ignored): ``predictions-<UTC hour>.jsonl``, one JSON object
per image (:mod:`pipeline.core.predictions`), and a sample of the images themselves,
``images/<UTC time>-<n>.npz`` (``x`` (N, 28, 28) uint8, ``row``, each image's record in the
hour's file that ``records`` names), at ``serve.sample_rate``.

A request only appends its input and answer to a bounded queue (:meth:`PredictionLog.record`):
the parsing, the statistics and the writing happen on the log's thread. When the queue holds
``max_pending`` images, or the disk or database refuses a write, the records are dropped, counted
(``on_drop``) and logged at most once a minute; a request never fails or waits for the log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.adapters.paths import Paths
from pipeline.core.environment import PREDICTIONS_URL
from pipeline.core.predictions import records, stamp

log = logging.getLogger(__name__)


class PredictionLog:
    """Records of served images; :meth:`record` never blocks and never raises."""

    def __init__(
        self,
        to: Path | str,
        sample_rate: float,
        *,
        max_pending: int = 100_000,
        flush_s: float = 1.0,
        on_drop: Callable[[int], None] = lambda n: None,
        seed: int | None = None,
    ):
        self.store, self.sample_rate, self.max_pending, self.flush_s = open_store(to), sample_rate, max_pending, flush_s
        self.on_drop, self.rng = on_drop, np.random.default_rng(seed)
        self._queue: deque = deque()
        self._pending = 0  # images in the queue
        self._lock, self._wake, self._stopped = threading.Lock(), threading.Event(), threading.Event()
        self._warned_at = 0.0
        self.written = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, version: str, model_input: object, predictions) -> None:
        """Queue one answered request: its input as the model got it (array or DataFrame) and its predictions (a DataFrame,
        or a mapping of the same columns: ``class_index``, ``class_name``, ``probabilities``)."""
        try:
            n = len(predictions["class_index"])
            with self._lock:
                if self._pending + n > self.max_pending:
                    full = True
                else:
                    full = False
                    self._queue.append((datetime.now(UTC), version, model_input, predictions))
                    self._pending += n
            if full:
                self._drop(n, f"the queue holds {self.max_pending} images (the disk is slower than the traffic)")
        except Exception as exc:  # the log must never fail a request
            self._drop(0, f"{type(exc).__name__}: {exc}")

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop the thread."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout)
        self.store.close()

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self.on_drop(n)
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("prediction log: dropped %d record(s) so far (%s)", self.dropped, why)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.flush_s)
            self._flush()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._queue = list(self._queue), deque()
            self._pending = 0
        for item in batch:
            try:
                self._write(*item)
            except Exception as exc:  # a full disk, a database gone: the records are lost, not the requests
                self._drop(len(item[3]["class_index"]), f"{type(exc).__name__}: {exc}")

    def _write(self, when: datetime, version: str, model_input: object, predictions) -> None:
        rows, pixels = records(when, version, model_input, predictions)
        self.store.write(when, rows, pixels, np.flatnonzero(self.rng.random(len(rows)) < self.sample_rate))
        self.written += len(rows)


class Files:
    """The embedded store: hourly JSON-lines files and ``.npz`` samples under one folder (the module's layout)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._rows: dict[Path, int] = {}  # records already in each hour's file (for the sampled images' rows)
        self._read: dict[str, dict[str, list[dict]]] = {}  # by_file per `since`: the monitor reads the files once

    def write(self, when: datetime, records: list[dict], pixels: np.ndarray, keep: np.ndarray) -> None:
        """Append ``records`` to the hour's file, and keep the images ``keep`` indexes (``pixels``: (N, 28, 28) uint8)."""
        path = self.folder / f"predictions-{when:%Y%m%dT%H}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        first = self._rows.get(path) if path.exists() else 0  # a file removed or moved away starts again at row 0
        if first is None:
            first = sum(1 for _ in path.open())
        with path.open("a") as out:
            out.write("\n".join(json.dumps(r) for r in records) + "\n")
        self._rows[path] = first + len(records)
        if len(keep):
            images = self.folder / "images" / f"{when:%Y%m%dT%H%M%S%f}-{first}.npz"
            try:
                images.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(images, x=pixels[keep], row=first + keep, records=np.array(path.name))
            except OSError as exc:  # the records are written; only the sample is lost
                log.warning("prediction log: could not keep %d sampled image(s): %s", len(keep), exc)

    def _files(self, since: datetime | None) -> dict[str, list[dict]]:
        key = "" if since is None else stamp(since)
        if key not in self._read:
            self._read[key] = by_file(self.folder, since)
        return self._read[key]

    def records(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        """Every record from ``since`` to ``until`` (both included, either open), oldest first."""
        first, last = _bounds(since, until)
        return [r for rows in self._files(since).values() for r in rows if first <= r["time"] <= last]

    def sampled(self, since: datetime | None = None, until: datetime | None = None) -> tuple[np.ndarray, list[dict]]:
        """The images kept from ``since`` to ``until``, as uint8 (N, 28, 28), and their records."""
        files, (first, last), images, records = self._files(since), _bounds(since, until), [], []
        for path in sorted((self.folder / "images").glob("*.npz")):
            with np.load(path) as kept:
                rows = files.get(str(kept["records"]))
                if rows is None:
                    continue
                for image, row in zip(kept["x"], kept["row"]):
                    if row < len(rows) and first <= rows[row]["time"] <= last:
                        images.append(image)
                        records.append(rows[row])
        return np.asarray(images, np.uint8).reshape(-1, 28, 28), records

    def close(self) -> None:
        """Nothing held open between writes."""


def where(paths: Paths) -> Path | str:
    """Where this process's prediction log is: the database ``FMNIST_PREDICTIONS_URL`` names, or ``data/predictions/``."""
    return os.environ.get(PREDICTIONS_URL) or paths.predictions


def open_store(to: Path | str):
    """The store at ``to``: :class:`Files` in a folder, or the PostgreSQL of a ``postgresql://`` URL."""
    if isinstance(to, str) and to.startswith(("postgresql://", "postgres://")):
        from pipeline.adapters.prediction_db import Table

        return Table(to)
    return Files(Path(to))


def by_file(folder: Path, since: datetime | None = None) -> dict[str, list[dict]]:
    """Every record of each hourly file under ``folder``, oldest file first; files of hours before ``since`` are not read."""
    first = None if since is None else f"predictions-{since.astimezone(UTC):%Y%m%dT%H}.jsonl"
    paths = [p for p in sorted(folder.glob("predictions-*.jsonl")) if first is None or p.name >= first]
    return {p.name: [json.loads(line) for line in p.open() if line.strip()] for p in paths}


def _bounds(since: datetime | None, until: datetime | None) -> tuple[str, str]:
    return ("" if since is None else stamp(since)), ("~" if until is None else stamp(until))  # "~" sorts after digits
