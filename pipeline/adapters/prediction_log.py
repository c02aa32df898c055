"""The prediction log of ``fmnist serve``: one record per served image, written in batches by a thread of its own.

Files under ``data/predictions/`` (git-ignored): ``predictions-<UTC hour>.jsonl``, one JSON object
per image (UTC time, version, predicted class, top probability, pixel mean, standard deviation and
maximum of the image as the model saw it, in [0, 1], and its pixel counts in the 16 intensity bins
of :mod:`pipeline.core.drift`, which ``fmnist monitor`` sums), and a sample of the images themselves,
``images/<UTC time>-<n>.npz`` (``x`` (N, 28, 28) uint8, ``row``, each image's record in the
hour's file that ``records`` names), at ``serve.sample_rate``.

A request only appends its input and answer to a bounded queue (:meth:`PredictionLog.record`):
the parsing, the statistics and the writing happen on the log's thread. When the queue holds
``max_pending`` images, or the disk refuses a write, the records are dropped, counted
(``on_drop``) and logged at most once a minute; a request never fails or waits for the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.core.drift import histograms
from pipeline.core.images import rows_to_images, to_model_input

log = logging.getLogger(__name__)


class PredictionLog:
    """Records of served images; :meth:`record` never blocks and never raises."""

    def __init__(
        self,
        folder: Path,
        sample_rate: float,
        *,
        max_pending: int = 100_000,
        flush_s: float = 1.0,
        on_drop: Callable[[int], None] = lambda n: None,
        seed: int | None = None,
    ):
        self.folder, self.sample_rate, self.max_pending, self.flush_s = folder, sample_rate, max_pending, flush_s
        self.on_drop, self.rng = on_drop, np.random.default_rng(seed)
        self._queue: deque = deque()
        self._pending = 0  # images in the queue
        self._lock, self._wake, self._stopped = threading.Lock(), threading.Event(), threading.Event()
        self._warned_at = 0.0
        self._rows: dict[Path, int] = {}  # records already in each hour's file (for the sampled images' rows)
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
            except Exception as exc:  # a full or read-only disk: the records are lost, not the requests
                self._drop(len(item[3]["class_index"]), f"{type(exc).__name__}: {exc}")

    def _write(self, when: datetime, version: str, model_input: object, predictions) -> None:
        x = _images(model_input)  # (N, 28, 28) float32 in [0, 1]
        flat = x.reshape(len(x), -1)
        mean, std, peak = flat.mean(axis=1), flat.std(axis=1), flat.max(axis=1)
        pixels = np.round(x * 255).astype(np.uint8)
        bins = histograms(pixels).tolist()
        proba = np.asarray(predictions["probabilities"].tolist(), dtype=np.float64)
        at = stamp(when)
        lines = [
            json.dumps(
                {
                    "time": at,
                    "version": version,
                    "class_index": int(i),
                    "class_name": name,
                    "top_probability": round(float(p.max()), 6),
                    "pixel_mean": round(float(m), 6),
                    "pixel_std": round(float(s), 6),
                    "pixel_max": round(float(mx), 6),
                    "pixel_histogram": h,
                }
            )  # fmt: skip
            for i, name, p, m, s, mx, h in zip(
                predictions["class_index"], predictions["class_name"], proba, mean, std, peak, bins
            )
        ]
        path = self.folder / f"predictions-{when:%Y%m%dT%H}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        first = self._rows.get(path) if path.exists() else 0  # a file removed or moved away starts again at row 0
        if first is None:
            first = sum(1 for _ in path.open())
        with path.open("a") as out:
            out.write("\n".join(lines) + "\n")
        self._rows[path] = first + len(lines)
        self.written += len(lines)
        keep = np.flatnonzero(self.rng.random(len(x)) < self.sample_rate)
        if len(keep):
            images = self.folder / "images" / f"{when:%Y%m%dT%H%M%S%f}-{self.written}.npz"
            try:
                images.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(images, x=pixels[keep], row=first + keep, records=np.array(path.name))
            except OSError as exc:  # the records are written; only the sample is lost
                log.warning("prediction log: could not keep %d sampled image(s): %s", len(keep), exc)


def _images(model_input: object) -> np.ndarray:
    """The images of a request as the model saw them: (N, 28, 28) float32 in [0, 1]."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        model_input = rows_to_images(list(model_input.columns), model_input.to_numpy())
    return to_model_input(model_input)[..., 0]


def by_file(folder: Path, since: datetime | None = None) -> dict[str, list[dict]]:
    """Every record of each hourly file under ``folder``, oldest file first; files of hours before ``since`` are not read."""
    first = None if since is None else f"predictions-{since.astimezone(UTC):%Y%m%dT%H}.jsonl"
    paths = [p for p in sorted(folder.glob("predictions-*.jsonl")) if first is None or p.name >= first]
    return {p.name: [json.loads(line) for line in p.open() if line.strip()] for p in paths}


def read(folder: Path, since: datetime | None = None, files: dict[str, list[dict]] | None = None) -> list[dict]:
    """Every record under ``folder`` (from ``since`` on, if given), oldest file first; ``files``: :func:`by_file`, if read."""
    files = by_file(folder, since) if files is None else files
    first = "" if since is None else stamp(since)
    return [r for rows in files.values() for r in rows if r["time"] >= first]


def sampled(
    folder: Path, since: datetime | None = None, files: dict[str, list[dict]] | None = None
) -> tuple[np.ndarray, list[dict]]:
    """The images the log kept (from ``since`` on), as uint8 (N, 28, 28), and their records; ``files`` as for :func:`read`."""
    files = by_file(folder, since) if files is None else files
    first, images, records = "" if since is None else stamp(since), [], []
    for path in sorted((folder / "images").glob("*.npz")):
        with np.load(path) as kept:
            rows = files.get(str(kept["records"]))
            if rows is None:
                continue
            for image, row in zip(kept["x"], kept["row"]):
                if row < len(rows) and rows[row]["time"] >= first:
                    images.append(image)
                    records.append(rows[row])
    return np.asarray(images, np.uint8).reshape(-1, 28, 28), records


def stamp(when: datetime) -> str:
    """A time as the records hold it (UTC, milliseconds), so that the two compare as strings."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")
