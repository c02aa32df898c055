"""``fmnist bench [--quick] [--out DIR] [--fast-variant NAME]``: the benchmark suite, side by side in one run.

Reads ``params.yaml``, ``data/prepared/*.npz`` and ``reports/run.json`` of the repository it
runs in; writes ``<out>/benchmarks.json`` and ``<out>/benchmarks.md`` (``out``: ``reports/``).
Everything it trains or tracks goes to temporary folders: a throwaway MLflow store, and a
throwaway git + DVC copy of the project for the stage-level measures.

Full mode takes 30 to 40 minutes on 2 quiet cores; run it on a quiet machine (the load average
at start and end goes into the report). ``--quick`` (tiny subsets, one repetition) checks
that the suite runs end to end, in about 2 minutes on a quiet machine.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import profile, project, report, training
from benchmarks.common import FULL, QUICK, Data, Mode, temp_store, unavailable
from benchmarks.tracking_cost import tracking_overhead
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


def _measure(key: str, step: Callable[[], dict]) -> dict:
    """Run one measure; a failure is recorded in the report (and fails the command at the end), not raised."""
    log.info("bench: %s", key)
    start = time.perf_counter()
    try:
        measured = step()
    except Exception as exc:  # one broken measure must not lose the others' figures
        log.error("bench: %s failed:\n%s", key, traceback.format_exc())
        measured = unavailable(key, key, "-", f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    log.info("bench: %s done in %.0f s", key, time.perf_counter() - start)
    return measured


def _training_measures(data: Data, params: Params, mode: Mode, fast_variant: str | None) -> tuple[list[dict], list[dict]]:
    """Profile probes and measures 1, 2, 3 and 6, all in this process on one temporary MLflow store."""
    with temp_store() as store:
        try:
            probes = profile.profile(*data.train, mode)
        except Exception:  # the probes explain the figures; the figures come first
            log.error("bench: profiling probes failed:\n%s", traceback.format_exc())
            probes = []
        measures = [
            _measure("pipeline_vs_plain", lambda: training.pipeline_vs_plain(data, params, mode, store)),
            _measure("tuned_vs_plain", lambda: training.tuned_vs_plain(data, params, mode, store)),
            _measure("time_to_92", lambda: training.time_to_92(data, params, mode, store, fast_variant)),
            _measure("tracking_overhead", lambda: tracking_overhead(store, params, mode)),
        ]
    return probes, measures


def _project_measures(root: Path, mode: Mode) -> list[dict]:
    """Measures 5, 4 and 7 around a temporary project copy (5 first: it leaves the copy up to date for 4)."""
    variants = ("baseline",) if mode.quick else ("baseline", "dropout")
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-project-") as tmp:
        copy = project.TempProject(Path(tmp) / "repo", root, variants, limit=500 if mode.quick else 2000)
        try:
            copy.create().setup()
        except Exception as exc:
            log.error("bench: the temporary project failed:\n%s", traceback.format_exc())
            why = f"failed: temporary project: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            measured = [unavailable(key, key, "-", why) for key in ("orchestration", "dvc_noop", "peak_memory")]
        else:
            measured = [
                _measure("orchestration", lambda: project.orchestration(copy, mode)),
                _measure("dvc_noop", lambda: project.dvc_noop(root, mode, copy)),
                _measure("peak_memory", lambda: project.peak_memory(copy, mode)),  # last: it changes the copy's params
            ]
    return measured + [_measure("pipeline_wall_time", lambda: project.pipeline_wall_time(root))]


ORDER = ("pipeline_vs_plain", "tuned_vs_plain", "time_to_92", "dvc_noop", "orchestration", "tracking_overhead")
ORDER += ("peak_memory", "pipeline_wall_time")


def run(mode: Mode, out: Path, fast_variant: str | None = None) -> dict:
    """Every measure, then the report files; returns the report document."""
    root, params = Path.cwd(), load_params()
    if fast_variant:
        params.variant(fast_variant)  # an unknown name fails now, not after 20 minutes
    data = Data.load(Paths().prepared, mode)
    start, info = time.perf_counter(), report.machine()
    probes, measures = _training_measures(data, params, mode, fast_variant)
    measures = sorted(measures + _project_measures(root, mode), key=lambda m: ORDER.index(m["key"]))
    command = " ".join(
        ["fmnist bench", *(["--quick"] if mode.quick else []), *(["--fast-variant", fast_variant] if fast_variant else [])]
    )
    doc = {
        "mode": "quick" if mode.quick else "full",
        "command": command,
        "date": report.stamp(),
        "seconds": time.perf_counter() - start,
        "machine": info,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "measures": measures,
        "profile": probes,
    }
    report.write(out, doc, params)
    return doc


def cli(args) -> None:
    """Entry point of ``fmnist bench``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mode = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else Paths().reports
    doc = run(mode, out, args.fast_variant)
    print(report.table(doc["measures"]))
    print(f"\nwrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")
    failed = [m["key"] for m in doc["measures"] if str(m.get("status", "")).startswith("failed")]
    if failed:
        raise PipelineError(f"benchmark measures failed: {', '.join(failed)} (the log above has the tracebacks)")


if __name__ == "__main__":
    sys.exit("run it as `fmnist bench`")
