"""A study on the stack's workers: ``python -m benchmarks.tune_workers [--trials 6] [--epochs 2] [--limit 10000]``.

In a throwaway copy of the project, with a stack of two Prefect process workers on this machine,
each pinned to one core of its own (``fmnist stack up --workers 2 --pin``), the same study (the
``wide_aug`` variant; learning rate, dropout and label smoothing searched; ``--trials`` trials of
``--epochs`` epochs on ``--limit`` training images; no pruning, so every trial trains as long):

1. ``fmnist tune STUDY --workers fmnist-process`` with both workers;
2. worker-2 stopped, the same study under another name (nothing shared with the first), with one.

Records each run's wall time and, per trial, its worker and fit seconds (from the study's
PostgreSQL). Writes ``<out>/workers.json`` and ``<out>/workers.md`` (``out``: ``reports/tune/``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.distributed import pinned_stack
from benchmarks.project import TempProject, timed
from benchmarks.report import machine, write_pair
from pipeline import stack
from pipeline.core.environment import TUNE_STORAGE

SPACE = {"learning_rate": {"log": [0.001, 0.01]}, "dropout": {"uniform": [0.0, 0.3]}, "label_smoothing": {"uniform": [0.0, 0.15]}}


def _study(trials: int) -> dict:
    return {"variant": "wide_aug", "trials": trials, "pruner": "none", "seed": 0, "space": SPACE}


def _run(project: TempProject, env: dict, label: str, study: str, args) -> dict:
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    timed(["git", "add", "-A"], project.root)
    timed([*git, "commit", "-q", "--allow-empty", "-m", f"{label}: study {study}"], project.root)
    cmd = [sys.executable, "-m", "pipeline", "tune", study, "--workers", stack.POOL, "--limit", str(args.limit),
           "--epochs", str(args.epochs)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=project.root, env=env, check=True)
    wall = time.perf_counter() - start
    import optuna

    trials = optuna.load_study(study_name=study, storage=env[TUNE_STORAGE]).get_trials()
    rows = [{"number": t.number, "worker": t.user_attrs.get("worker"), "state": t.state.name.lower(),
             "fit_s": t.user_attrs.get("fit_seconds"), "value": t.value} for t in trials]  # fmt: skip
    return {"label": label, "study": study, "wall_s": round(wall, 1), "trials": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="trials of the study (default 6)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every trial (default 2)")
    parser.add_argument("--limit", type=int, default=10_000, help="training images of every trial (default 10,000)")
    parser.add_argument("--out", default="reports/tune", help="folder for workers.json and .md")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fmnist-tune-workers-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
    project = TempProject(root / "project", Path.cwd(), ("wide_aug",), 0).create()  # wide_aug's settings; --epochs, --limit
    project.write_params(project.params() | {"tune": {"two": _study(args.trials), "one": _study(args.trials)}})
    project.setup()
    with pinned_stack(root / "stack", project.root) as env:
        two = _run(project, env, "2 workers", "two", args)
        stack.stop(root / "stack", "worker-2")
        one = _run(project, env, "1 worker", "one", args)
    report = {"trials": args.trials, "epochs": args.epochs, "limit": args.limit, "cores": os.cpu_count(),
              "cpu": machine()["cpu"], "runs": [two, one], "speedup": round(one["wall_s"] / two["wall_s"], 2)}  # fmt: skip
    print(write_pair(Path(args.out), "workers", report, _markdown(report)).read_text())


def _markdown(report: dict) -> str:
    two, one = report["runs"]
    lines = [
        "# A study on the stack's workers: 2 workers against 1",
        "",
        f"`python -m benchmarks.tune_workers --trials {report['trials']} --epochs {report['epochs']} --limit "
        f"{report['limit']}`: one study of {report['trials']} trials (variant `wide_aug`; learning rate, dropout and label "
        f"smoothing searched; {report['epochs']} epochs on {report['limit']:,} training images a trial, no pruning), through "
        f"`fmnist tune --workers fmnist-process` against a `fmnist stack` on this machine ({report['cores']} cores, "
        f"{report['cpu']}); each worker pinned to one core of its own, the coordinator unpinned. The 1-worker run is the "
        "same study under another name: nothing of the first is reused.",
        "",
        "| run | wall time (s) | trials per worker | fit s per trial (median) |",
        "|---|---:|---|---:|",
    ]
    for run in report["runs"]:
        workers = sorted({t["worker"] for t in run["trials"] if t["worker"]})
        per = ", ".join(f"{w}: {sum(t['worker'] == w for t in run['trials'])}" for w in workers)
        fits = [t["fit_s"] for t in run["trials"] if t["fit_s"] is not None]
        lines.append(f"| {run['label']} | {run['wall_s']:.1f} | {per} | {statistics.median(fits):.1f} |")
    fit_two, fit_one = _busiest_fit(two), _busiest_fit(one)
    lines += [
        f"| speed-up | {report['speedup']:.2f}x | | |",
        "",
        f"Fitting, on the busiest worker: {fit_two:.1f} s with 2 workers, {fit_one:.1f} s with 1 "
        f"({fit_one / fit_two:.2f}x). The rest of the wall time ({two['wall_s'] - fit_two:.1f} s with 2 workers, "
        f"{one['wall_s'] - fit_one:.1f} s with 1) is the flow runs' pickup by the workers (Prefect's polling), each "
        "worker's checkout and pull of the prepared data, TensorFlow's start, and each trial's model build, validation "
        "(with test-time augmentation) and records in Optuna and MLflow: with trials this short it is most of the time, "
        "and a second worker barely shortens it.",
        "",
    ]
    return "\n".join(lines)


def _busiest_fit(run: dict) -> float:
    """Seconds of fitting on the worker that fitted longest: the part of a run's wall time that more workers divide."""
    per_worker: dict[str, float] = {}
    for t in run["trials"]:
        per_worker[t["worker"]] = per_worker.get(t["worker"], 0.0) + (t["fit_s"] or 0)
    return max(per_worker.values())


if __name__ == "__main__":
    main()
