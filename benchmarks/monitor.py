"""How long ``fmnist monitor`` takes over a large window: ``python -m benchmarks.monitor [--records N]``.

Logs ``N`` (default 100,000) predictions of the champion on real test images with the prediction
log itself (``pipeline/adapters/prediction_log.py``, the way ``fmnist serve`` writes them: the test
set's answers, over and over, stamped now), into a folder of its own beside a link to this
project's prepared data, then times the monitor's check of that window on this project's store:
reading the records and the sampled images, the training reference (the training split's pixels and
the champion's answers on ``retrain.reference_size`` images), the figures, and the export of images
to label (the window is made to drift by inverting half of the images, so the export has work).
Prints the figures as JSON; nothing is written to the project.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.report import machine
from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.adapters.mlflow.store import tracking_uri
from pipeline.adapters.paths import Paths
from pipeline.adapters.prediction_log import PredictionLog
from pipeline.core.config import load_params
from pipeline.services import monitor


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="predictions in the window (default 100,000)")
    args = parser.parse_args(argv)
    project, params = Paths(), load_params()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()  # the project's store, from the bench's own folder
    name = params.registry.model_name
    champion = registry.alias_version(name, "champion")
    x, _ = load_split(project.split("test"))
    x = np.concatenate([x[: len(x) // 2], 255 - x[len(x) // 2 :]])  # half inverted: a window that drifts
    answers = registry.load_version(name, champion).predict(x)
    with tempfile.TemporaryDirectory(prefix="fmnist-monitor-bench-") as tmp:
        paths = Paths(Path(tmp))
        (paths.root / "data").mkdir()
        paths.prepared.symlink_to(project.prepared.resolve())
        start = time.perf_counter()
        log = PredictionLog(paths.predictions, params.serve.sample_rate, max_pending=args.records, seed=0)
        for i in range(0, args.records, len(x)):
            n = min(len(x), args.records - i)
            log.record(champion, x[:n], answers[:n])
        log.close(timeout=600)
        logged = time.perf_counter() - start
        start = time.perf_counter()
        window = monitor.check(paths, params, now=datetime.now(UTC))
        seconds = time.perf_counter() - start
    out = {
        "command": "python -m benchmarks.monitor" + (f" --records {args.records}" if argv else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "records": window.images,
        "champion": champion,
        "log_written_s": round(logged, 1),
        "check_s": round(seconds, 1),
        "drifted": window.drifted,
        "exported": window.n_exported,
        "message": window.message,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
