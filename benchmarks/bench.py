"""``fmnist bench [--quick] [--out DIR] [--fast-variant NAME] [--only KEYS]``: the benchmark suite, side by side in one run.

Reads ``params.yaml``, ``data/prepared/*.npz`` and ``reports/run.json`` of the repository it
runs in; writes ``<out>/benchmarks.json`` and ``<out>/benchmarks.md`` (``out``: ``reports/``).
Everything it trains or tracks goes to temporary folders: a throwaway MLflow store, and a
throwaway git + DVC copy of the project for the stage-level measures.

Full mode takes well over an hour on 2 cores (docs/performance.md); run it on a quiet machine (the
load average at start and end goes into the report). ``--quick`` (tiny subsets, one repetition)
checks that the suite runs end to end, in about 4 minutes. ``--only KEY,...`` runs those measures
alone and puts them into the existing report in ``out`` in place of their former figures, each
with the date and machine it was measured on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import accuracy, profile, project, report, training
from benchmarks.common import FULL, QUICK, Data, Mode, temp_store, unavailable
from benchmarks.tracking_cost import tracking_overhead
from pipeline.adapters.files import read_metrics
from pipeline.adapters.paths import Paths
from pipeline.core import summary
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


def best_variant(params: Params, root: Path) -> str:
    """The pipeline's own choice in its last run (:func:`pipeline.core.summary.best_variant` over the variants evaluated in
    ``reports/metrics``), else the last variant of params."""
    files = {name: Paths(root).metrics(name) for name in params.variants if Paths(root).metrics(name).exists()}
    return summary.best_variant(read_metrics(files))["variant"] if files else list(params.variants)[-1]


def _training_measures(
    data: Data, params: Params, mode: Mode, fast_variant: str | None, only: set[str]
) -> tuple[list[dict], list[dict]]:
    """Profile probes and the measures that train in this process, all on one temporary MLflow store."""
    best = best_variant(params, Path.cwd())
    steps = {
        "pipeline_vs_plain": lambda store: training.pipeline_vs_plain(data, params, mode, store),
        "tuned_vs_plain": lambda store: training.tuned_vs_plain(data, params, mode, store),
        "time_to_92": lambda store: accuracy.time_to_accuracy(data, params, mode, store, 0.92, fast_variant),
        "time_to_93": lambda store: accuracy.time_to_accuracy(data, params, mode, store, 0.93, best=best),
        "time_to_94": lambda store: accuracy.time_to_accuracy(data, params, mode, store, 0.94, best=best),
        "trick_screening": lambda store: accuracy.screening(data, params, mode, store),
        "best_over_seeds": lambda store: accuracy.best_over_seeds(data, params, mode, store, best),
        "tracking_overhead": lambda store: tracking_overhead(store, params, mode),
    }  # fmt: skip
    probes = None
    with temp_store() as store:
        if not only or "profile" in only:
            try:
                probes = profile.profile(*data.train, mode)
            except Exception:  # the probes explain the figures; the figures come first
                log.error("bench: profiling probes failed:\n%s", traceback.format_exc())
                probes = []
        measures = [_measure(key, lambda step=step: step(store)) for key, step in steps.items() if not only or key in only]
    return probes, measures


def _project_measures(root: Path, mode: Mode, only: set[str]) -> list[dict]:
    """Measures 5, 4 and 7 around a temporary project copy (5 first: it leaves the copy up to date for 4), and the wall time.

    With ``only``, the three on the copy are taken together if any of them is asked for.
    """
    wall = (
        []
        if only and "pipeline_wall_time" not in only
        else [_measure("pipeline_wall_time", lambda: project.pipeline_wall_time(root))]
    )
    if only and not only & {"orchestration", "dvc_noop", "peak_memory"}:
        return wall
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
    return measured + wall


ORDER = ("best_over_seeds", "trick_screening", "time_to_92", "time_to_93", "time_to_94", "pipeline_vs_plain")
ORDER += ("tuned_vs_plain", "dvc_noop", "orchestration", "tracking_overhead", "peak_memory", "pipeline_wall_time")


def run(mode: Mode, out: Path, fast_variant: str | None = None, only: set[str] | None = None) -> dict:
    """Every measure (or those in ``only``), then the report files; returns the report document."""
    root, params, only = Path.cwd(), load_params(), only or set()
    if fast_variant:
        params.variant(fast_variant)  # an unknown name fails now, not after 20 minutes
    unknown = only - set(ORDER) - {"profile"}
    if unknown:
        raise PipelineError(f"--only: unknown measure {sorted(unknown)[0]!r}; expected some of {', '.join(ORDER)}, profile")
    previous = out / "benchmarks.json"
    if only and not previous.exists():
        raise PipelineError(
            f"--only updates an existing report, and {previous} does not exist: run the full `fmnist bench` first"
        )
    data = Data.load(Paths().prepared, mode)
    start, info = time.perf_counter(), report.machine()
    probes, measures = _training_measures(data, params, mode, fast_variant, only)
    measures += _project_measures(root, mode, only)
    command = " ".join(
        ["fmnist bench", *(["--quick"] if mode.quick else []), *(["--fast-variant", fast_variant] if fast_variant else [])]
        + (["--only", ",".join(sorted(only))] if only else [])
    )
    if only:
        return _update(previous, measures, probes, command, info, time.perf_counter() - start, params)
    measures = sorted(measures, key=lambda m: ORDER.index(m["key"]))
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


def _update(
    previous: Path, measures: list[dict], probes: list | None, command: str, info: dict, seconds: float, params: Params
) -> dict:
    """Put freshly taken measures into an existing report, each stamped with when and where it was measured."""
    doc = json.loads(previous.read_text())
    stamp = f"{report.stamp()}, `{command}`, {info['cpu']}, {info['cores']} cores, load {info['load_average_at_start']}"
    fresh = {m["key"]: m | {"measured": stamp, "seconds": seconds} for m in measures}
    kept = [m for m in doc["measures"] if m["key"] not in fresh and m["key"] in ORDER]
    doc["measures"] = sorted(kept + list(fresh.values()), key=lambda m: ORDER.index(m["key"]))
    if probes is not None:
        doc["profile"], doc["profile_measured"] = probes, stamp
    report.write(previous.parent, doc, params)
    return doc


def cli(args) -> None:
    """Entry point of ``fmnist bench``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mode = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else Paths().reports
    only = {k.strip() for k in args.only.split(",") if k.strip()} if args.only else None
    doc = run(mode, out, args.fast_variant, only)
    print(report.table(doc["measures"]))
    print(f"\nwrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")
    failed = [m["key"] for m in doc["measures"] if str(m.get("status", "")).startswith("failed")]
    if failed:
        raise PipelineError(f"benchmark measures failed: {', '.join(failed)} (the log above has the tracebacks)")


if __name__ == "__main__":
    sys.exit("run it as `fmnist bench`")
