"""Measures 4, 5 and 7: DVC with nothing to do, Prefect's overhead over ``dvc repro``, a training stage's memory.

Measures 5 and 7 run in a throwaway git + DVC copy of the project with tiny params (built by
:mod:`benchmarks.sandbox`, as the test suite's copies are), so the repository's data, models and MLflow store
are never touched. Measure 4 runs in the repository itself, but only when ``dvc status``
says nothing changed (otherwise ``dvc repro`` would train); it falls back to the copy.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import Mode, result, row, unavailable
from benchmarks.sandbox import make_project, write_params
from benchmarks.tiny import DEBIAN_DATA, tiny_params
from pipeline.adapters.dvc import dvc_command
from pipeline.core.environment import without_clients

log = logging.getLogger(__name__)

GOAL_DVC, GOAL_FLOW, GOAL_RSS_GB, GOAL_PIPELINE_MIN = 2.0, 15.0, 3.0, 15.0
# Runs argv[2:] and writes {"maxrss_kb": <peak RSS of it>} as JSON to argv[1].
_PEAK_RSS = (
    "import json, resource, subprocess, sys; subprocess.run(sys.argv[2:], check=True); "
    "open(sys.argv[1], 'w').write(json.dumps({'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


class BenchError(RuntimeError):
    """A command the benchmark runs failed."""


def _env(root: Path) -> dict[str, str]:
    """This interpreter's environment on PATH, no inherited MLflow store or parent run, Prefect home in ``root``."""
    env = dvc_command()[1]
    env = without_clients(env)
    prefect = {"PREFECT_HOME": str(root / ".prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    return env | prefect | {"TF_CPP_MIN_LOG_LEVEL": "2"}


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd``; its wall time and stdout. Raises BenchError with the output's tail if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(cwd), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise BenchError(f"`{' '.join(cmd[:4])}` in {cwd} exited {proc.returncode}:\n{tail}")
    return seconds, proc.stdout


def dvc(root: Path, *args: str) -> tuple[float, str]:
    return timed([dvc_command()[0][0], *args], root)


class TempProject:
    """A git + DVC copy of the project at ``root`` with tiny params; ``setup`` reproduces it once."""

    def __init__(self, root: Path, source: Path, variants: tuple[str, ...], limit: int):
        self.root, self.source, self.variants, self.limit = root, source, variants, limit
        self.runs = 0

    def params(self, **train) -> dict:
        """The source's params.yaml with the tiny variants, one epoch and ``limit`` images."""
        params = yaml.safe_load((self.source / "params.yaml").read_text())
        raw = self.source / "data" / "raw"
        params = tiny_params(
            params, self.variants, epochs=1, limit=self.limit, mirror=raw.resolve() if raw.is_dir() else DEBIAN_DATA
        )
        params["train"] |= train
        return params

    def write_params(self, params: dict) -> None:
        write_params(self.root, params)

    def create(self) -> TempProject:
        make_project(self.root, self.params(), self.source)
        return self

    def setup(self) -> None:
        """Download and prepare the data (the other measures reproduce the rest, or train directly)."""
        log.info("temporary project %s: dvc repro prepare", self.root)
        dvc(self.root, "repro", "prepare")

    def invalidate_training(self) -> None:
        """A learning rate never used before: every train stage and all below it must run (no run-cache hit)."""
        self.runs += 1
        self.write_params(self.params(learning_rate=0.001 + self.runs * 1e-7))


def _flow(project: TempProject) -> tuple[float, float]:
    """(process wall time, time inside ``training_flow()``) of one ``fmnist flow``."""
    seconds, _ = timed([sys.executable, "-m", "pipeline", "flow"], project.root)
    record = json.loads((project.root / "reports" / "run.json").read_text())  # `fmnist flow` records itself there
    return seconds, record["flow_seconds"]


def _pairs(project: TempProject, reps: int, work: bool) -> tuple[list[float], list[float], list[float]]:
    """``dvc repro`` and ``fmnist flow`` in alternating order; with ``work``, every run retrains first."""
    repro, flow, inner = [], [], []
    for rep in range(reps):
        for which in ("dvc", "flow") if rep % 2 == 0 else ("flow", "dvc"):
            if work:
                project.invalidate_training()
            if which == "dvc":
                repro.append(dvc(project.root, "repro")[0])
            else:
                total, in_flow = _flow(project)
                flow.append(total)
                inner.append(in_flow)
    return repro, flow, inner


def orchestration(project: TempProject, mode: Mode) -> dict:
    """Measure 5: ``fmnist flow`` (``training_flow``) minus the same stages under ``dvc repro``, alternating, warm Prefect home.

    Full mode times runs that retrain the tiny variants (and evaluate, summarize, register);
    quick mode only runs with nothing to do, after one flow run that builds everything.
    """
    title, goal = (
        "Orchestration overhead: fmnist flow (training_flow) wall time - dvc repro of the same stages",
        f"<= {GOAL_FLOW:.0f} s",
    )
    if not mode.quick:
        dvc(project.root, "repro")  # the first run of every stage, and a first MLflow store
    first, _ = _flow(project)  # creates the Prefect database (quick mode: and runs every stage)
    stages = f"train, evaluate ({len(project.variants)} tiny variant(s)), summarize, register"
    repro, flow, inner = _pairs(project, 0 if mode.quick else mode.reps, work=True)
    noop_repro, noop_flow, noop_inner = _pairs(project, mode.reps, work=False)
    rows = [
        row(f"dvc repro: {stages}", repro),
        row("fmnist flow, whole process (python start, imports, temporary Prefect server)", flow),
        row("training_flow() call alone", inner),
        row("dvc repro, nothing to do", noop_repro),
        row("fmnist flow, nothing to do, whole process", noop_flow),
        row("training_flow() call alone, nothing to do", noop_inner),
        row("first fmnist flow (cold Prefect home" + ("; builds every stage)" if mode.quick else ")"), [first]),
    ]
    rows = [r for r in rows if r["n"]]  # quick mode has no runs with work to do
    if not repro:
        repro, flow = noop_repro, noop_flow
    overhead = statistics.median(flow) - statistics.median(repro)
    return result("orchestration", title, goal, overhead, overhead <= GOAL_FLOW, rows, unit="s")


def _up_to_date(root: Path) -> tuple[float, bool]:
    seconds, out = dvc(root, "status")
    return seconds, "up to date" in out


def dvc_noop(root: Path, mode: Mode, fallback: TempProject | None) -> dict:
    """Measure 4: ``dvc status`` and ``dvc repro`` when nothing changed (in the repository if it is up to date)."""
    title, goal = "dvc status and dvc repro when nothing changed", f"<= {GOAL_DVC:.0f} s each"
    first, clean = _up_to_date(root)
    where, note = root, "in the repository"
    if not clean:
        if fallback is None or not _up_to_date(fallback.root)[1]:
            return unavailable("dvc_noop", title, goal, "not measured: the repository is not up to date (run `fmnist run`)")
        where, note = fallback.root, "in the temporary project (the repository was not up to date: run `fmnist run` first)"
    status, repro = [], []
    for _ in range(mode.dvc_reps):
        status.append(dvc(where, "status")[0])
        repro.append(dvc(where, "repro")[0])
    figure = max(statistics.median(status), statistics.median(repro))
    rows = [row("dvc status", status), row("dvc repro", repro)]
    return result("dvc_noop", title, goal, figure, figure <= GOAL_DVC, rows, unit="s", where=note, first_status_seconds=first)


def peak_memory(project: TempProject, mode: Mode) -> dict:
    """Measure 7a: peak RSS of ``python -m pipeline.stages.train baseline``, one epoch (the peak is reached in the first)."""
    params = project.params()
    params["train"]["limit"] = mode.limit
    params["variants"] = {"baseline": params["variants"].get("baseline", {"architecture": "tutorial_cnn"}) | {"epochs": 1}}
    project.write_params(params)
    out = project.root / "peak-rss.json"
    cmd = [sys.executable, "-c", _PEAK_RSS, str(out), sys.executable, "-m", "pipeline.stages.train", "baseline"]
    seconds, _ = timed(cmd, project.root)
    gb = json.loads(out.read_text())["maxrss_kb"] / 1024**2
    images = mode.limit or "all 55,000"
    rows = [row(f"peak RSS, train stage (baseline, {images} images, 1 epoch)", [gb], unit="GB"), row("its wall time", [seconds])]
    title = "Peak memory (RSS) of a training stage"
    return result("peak_memory", title, f"<= {GOAL_RSS_GB:.0f} GB", gb, gb <= GOAL_RSS_GB, rows, unit="GB")


def pipeline_wall_time(root: Path) -> dict:
    """Measure 7b: the default pipeline's wall time, as ``fmnist run`` recorded it in reports/run.json."""
    title, goal = "Wall time of the whole default pipeline (last `fmnist run`)", f"<= {GOAL_PIPELINE_MIN:.0f} min"
    path = root / "reports" / "run.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if "wall_seconds" not in record:  # `fmnist flow` records only its flow time there
        return unavailable(
            "pipeline_wall_time", title, goal, "not measured: reports/run.json has no `fmnist run` record (run it)"
        )
    minutes = record["wall_seconds"] / 60
    ran = record.get("stages_out_of_date") or []
    what = "every stage" if not ran or "download" in ran else f"the stages from {', '.join(ran)} on (the others up to date)"
    rows = [row(f"dvc repro of {what} (reports/run.json)", [minutes], unit="min")]
    return result("pipeline_wall_time", title, goal, minutes, minutes <= GOAL_PIPELINE_MIN, rows, unit="min")
