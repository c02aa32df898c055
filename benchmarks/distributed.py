"""The training flow on workers: ``python -m benchmarks.distributed [--epochs 2] [--limit 0]``.

In a throwaway copy of the project (the default variants, each for ``--epochs``, on
``--limit`` training images: 0 is all 55,000), with a stack of two Prefect process workers on
this machine, each pinned to one core of its own (``fmnist stack up --workers 2 --pin``):

1. ``fmnist flow --workers fmnist-process`` with both workers;
2. worker-2 stopped, a new seed (so nothing comes from the run cache), the same with one worker.

For each variant it records the worker's steps (checkout, pull of the prepared data, train,
evaluate, push), its pickup by a worker (the pool's polling and the run's start-up), and the
coordinator's ``dvc repro --pull`` of the results; the overhead of the distributed path is all
but train and evaluate. It projects 8 and 32 workers from these per-variant times.
Writes ``<out>/distributed.json`` and ``<out>/distributed.md`` (``out``: ``reports/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.project import TempProject, timed
from benchmarks.report import machine, write_pair
from pipeline import stack
from pipeline.core.config import load_params
from pipeline.core.environment import without_clients

STEPS = ("checkout_s", "pull_s", "train_s", "evaluate_s", "push_s")
OVERHEAD = ("pickup_s", "checkout_s", "pull_s", "push_s", "collect_s")


def variants() -> tuple[str, ...]:
    """The default variants of the ``params.yaml`` here."""
    return tuple(load_params().variants)


def _prefect(env: dict, path: str, body: dict) -> list:
    req = urllib.request.Request(
        f"{env['PREFECT_API_URL']}/{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def _records(env: dict) -> list[dict]:
    """The coordinator's table of the last training on workers (one row per variant), with each variant's pickup time.

    ``pickup_s``: from the moment the variant could start (its flow run created, or its worker free
    of the previous one) to its start on the worker: the pool's polling and the flow run's start-up.
    """
    found = _prefect(
        env, "artifacts/filter", {"artifacts": {"key": {"any_": ["variants-on-workers"]}}, "sort": "CREATED_DESC", "limit": 1}
    )
    rows = found[0]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    free: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["started"]):
        row["pickup_s"] = round(row["started"] - max(row["created"], free.get(row["worker"], 0.0)), 2)
        free[row["worker"]] = row["ended"]
    return rows


def _run(project: TempProject, env: dict, label: str, seed: int) -> dict:
    params = project.params()
    params["base"]["seed"] = seed
    project.write_params(params)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    timed(["git", "add", "-A"], project.root)
    timed([*git, "commit", "-q", "-m", f"{label}: seed {seed}"], project.root)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "flow", "--workers", stack.POOL], cwd=project.root, env=env, check=True)
    wall = time.perf_counter() - start
    rows = _records(env)
    return {"label": label, "seed": seed, "wall_s": round(wall, 1), "variants": rows}


@contextmanager
def pinned_stack(root: Path, repo: Path) -> Iterator[dict]:
    """``fmnist stack up --workers 2 --pin`` in ``root`` for the project ``repo``, down at the end; yields the environment
    a command needs to use it (this interpreter first on PATH, no inherited MLflow store or parent run)."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    state = stack.up(root, repo, workers=2, pin=True)
    try:
        yield without_clients(env) | stack.environment(state)
    finally:
        stack.down(root, repo)


def _project(epochs: int, limit: int, root: Path) -> TempProject:
    names = variants()
    project = TempProject(root / "project", Path.cwd(), names, limit)
    base = project.params

    def params(**train) -> dict:  # the default variants, each for `epochs`, on `limit` images
        p = base(**train)
        p["variants"] = {v: p["variants"][v] | {"epochs": epochs} for v in names}
        return p

    project.params = params
    project.create()
    project.setup()
    return project


def _per_variant(rows: list[dict]) -> dict[str, float]:
    """Each variant's time on the distributed path: its pickup by a worker, the worker's steps, the collection here."""
    return {r["variant"]: r["pickup_s"] + sum(r[k] for k in STEPS) + r["collect_s"] for r in rows}


def _makespan(times: list[float], n: int) -> float:
    """The finishing time of ``times`` on ``n`` workers, longest first onto the least loaded one."""
    loads = [0.0] * n
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every variant (default 2)")
    parser.add_argument("--limit", type=int, default=0, help="training images (default 0: all)")
    parser.add_argument("--out", default="reports", help="folder for distributed.json and .md")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fmnist-distributed-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
    project = _project(args.epochs, args.limit, root)
    with pinned_stack(root / "stack", project.root) as env:
        two = _run(project, env, "2 workers", seed=42)
        stack.stop(root / "stack", "worker-2")
        one = _run(project, env, "1 worker", seed=43)
    report = {
        "epochs": args.epochs,
        "limit": args.limit,
        "cores": os.cpu_count(),
        "cpu": machine()["cpu"],
        "runs": [two, one],
        "speedup": round(one["wall_s"] / two["wall_s"], 2),
    }
    print(write_pair(Path(args.out), "distributed", report, _markdown(report)).read_text())


def _markdown(report: dict) -> str:
    two, one = report["runs"]
    n = len(two["variants"])
    data = "all 55,000" if not report["limit"] else f"{report['limit']:,}"
    lines = [
        "# Variants on workers: 2 workers against 1",
        "",
        f"`python -m benchmarks.distributed --epochs {report['epochs']} --limit {report['limit']}`: the {n} default",
        f"variants, {report['epochs']} epochs each on {data} training images, through `fmnist flow --workers fmnist-process`",
        f"against a `fmnist stack` on this machine ({report['cores']} cores, {report['cpu']}); each worker pinned to one",
        "core of its own, the coordinator unpinned. The 1-worker run trains with another seed (nothing from the run cache).",
        "",
        "| run | flow wall time (s) |",
        "|---|---:|",
        f"| 2 workers | {two['wall_s']:.1f} |",
        f"| 1 worker | {one['wall_s']:.1f} |",
        f"| speed-up | {report['speedup']:.2f}x |",
        "",
        "Per variant (s): `pickup`, from the moment it could start (its flow run created, or its worker free) to",
        "its start on the worker (the pool's polling and the run's start-up); the worker's steps; and the",
        "coordinator's `dvc repro --pull` of the results (`collect`).",
        "",
        "| run | variant | worker | pickup | checkout | pull | train | evaluate | push | collect | overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = variants()  # read once; a variant no longer in params.yaml goes last
    for run in report["runs"]:
        for r in sorted(run["variants"], key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order)):
            overhead = sum(r[k] for k in OVERHEAD)
            cells = " | ".join(f"{r[k]:.1f}" for k in ("pickup_s", *STEPS, "collect_s"))
            lines.append(f"| {run['label']} | {r['variant']} | {r['worker']} | {cells} | {overhead:.1f} |")
    overheads = [sum(r[k] for k in OVERHEAD) for run in report["runs"] for r in run["variants"]]
    moves = [
        sum(r[k] for k in ("checkout_s", "pull_s", "push_s", "collect_s")) for run in report["runs"] for r in run["variants"]
    ]
    times = _per_variant(two["variants"])
    outside = two["wall_s"] - _makespan(list(times.values()), 2)  # download, prepare, the push, summarize, register
    lines += [
        "",
        f"Overhead of the distributed path per variant: median {statistics.median(overheads):.1f} s, of which moving code",
        f"and data (checkout, pull, push, collect) {statistics.median(moves):.1f} s; the rest is the pickup (Prefect's",
        "workers poll their pool every 10 s by default, and a flow run's process starts Python and Prefect).",
        "",
        "## Projection",
        "",
        "From the 2-worker run: each variant's time on the distributed path (pickup, steps, collect) scheduled longest",
        f"first onto the least loaded worker, plus the flow's time outside the variants in that run ({outside:.0f} s:",
        "download, prepare and the push of the prepared data before, summarize and register after).",
        "",
        f"| workers | the {n} variants (s) | a sweep of {8 * n} (8 of each) (s) |",
        "|---:|---:|---:|",
        *(
            f"| {w} | {outside + _makespan(list(times.values()), w):.0f} | {outside + _makespan(list(times.values()) * 8, w):.0f} |"
            for w in (1, 2, 8, 32)
        ),
        "",
        f"The {n} variants cannot finish sooner than their longest ({max(times.values()):.0f} s here) on any number of",
        "workers: more workers pay off for sweeps (more variants, seeds or trials), as long as the DVC remote and the",
        "MLflow and Prefect servers keep up, which was not measured here past 2 workers.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
