"""The model server's metrics, in Prometheus's text format (``prometheus_client``), on a registry of their own.

Names start with ``fmnist_serve_``. The alert rules that read them are ``monitoring/alerts.yml``.

A server started with ``FMNIST_SCRAPE_TARGETS`` set (the team stack exports it) announces its address
there for Prometheus's file-based discovery (:func:`announce`), and takes it back when it stops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary, generate_latest

from pipeline.adapters.files import atomic_write_text

TARGETS_ENV = "FMNIST_SCRAPE_TARGETS"  # a folder Prometheus reads targets from (file_sd_configs)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # seconds: one image is a few ms


class ServerMetrics:
    """Every metric of one server process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fmnist_serve_requests", "Requests to /invocations", ["status", "format"], registry=r)
        self.latency = Histogram(
            "fmnist_serve_request_seconds", "Time to answer /invocations", ["format"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("fmnist_serve_images", "Images classified", ["version"], registry=r)
        self.predicted = Counter("fmnist_serve_predictions", "Predicted classes", ["version", "class_name"], registry=r)
        self.top = Summary("fmnist_serve_top_probability", "Top class probability of each image (sum/count: the mean)", ["version"], registry=r)  # fmt: skip
        self.model = Info("fmnist_serve_model", "The version being served", registry=r)
        self.swaps = Counter("fmnist_serve_swaps", "Versions swapped in after the alias moved", registry=r)
        self.failed_loads = Counter("fmnist_serve_failed_loads", "Versions that failed to load or to answer their check", registry=r)  # fmt: skip
        self.registry_up = Gauge("fmnist_serve_registry_reachable", "1 when the registry answered the last alias check", registry=r)  # fmt: skip
        self.registry_up.set(1)
        self.log_dropped = Counter("fmnist_serve_log_dropped", "Prediction-log records dropped (queue full, or the disk refused)", registry=r)  # fmt: skip

    def serving(self, describe: dict[str, str | None]) -> None:
        self.model.info({k: str(v or "") for k, v in describe.items()})

    def answered(self, version: str, class_names: list[str], top: list[float]) -> None:
        self.images.labels(version).inc(len(class_names))
        for name in set(class_names):
            self.predicted.labels(version, name).inc(class_names.count(name))
        summary = self.top.labels(version)
        for p in top:
            summary.observe(p)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def announce(host: str, port: int, labels: dict[str, str]) -> Path | None:
    """Write this server's target into ``$FMNIST_SCRAPE_TARGETS`` (if set); returns the file, to remove at exit."""
    folder = os.environ.get(TARGETS_ENV)
    if not folder:
        return None
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    path = Path(folder) / f"fmnist-serve-{port}.json"
    atomic_write_text(path, json.dumps([{"targets": [f"{host}:{port}"], "labels": labels}]))  # never half a file
    return path


__all__ = ["CONTENT_TYPE", "TARGETS_ENV", "ServerMetrics", "announce"]
