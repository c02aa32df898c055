"""Stage ``summarize``: every variant side by side in ``reports/summary.md``.

Reads ``reports/metrics/<variant>.json`` for the variants in ``params.yaml``; writes
``reports/summary.md``, sorted by validation accuracy (the selection criterion), naming the best.
"""

from __future__ import annotations

import logging
import os
import platform

from pipeline.adapters.files import atomic_write_text, read_metrics
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core.config import load_params
from pipeline.core.summary import render

log = logging.getLogger(__name__)


def main() -> None:
    params, paths = load_params(), Paths()
    scores = read_metrics({v: paths.metrics(v) for v in params.variants})
    atomic_write_text(paths.summary, render(scores, platform.machine(), len(os.sched_getaffinity(0))))
    log.info("wrote %s", paths.summary)


if __name__ == "__main__":
    run_entry(main)
