"""``fmnist stack up | env | status | down``: the team's servers on this machine (:mod:`pipeline.stack`)."""

from __future__ import annotations

import shlex
from pathlib import Path

from pipeline import stack
from pipeline.adapters.paths import Paths


def _root(args) -> Path:
    return Path(args.dir) if args.dir else Paths().store_root / ".stack"


def _exports(root: Path) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in stack.environment(stack.load(root)).items()]


def up(args) -> None:
    root = _root(args)
    kept = (root / "postgres" / "db" / "PG_VERSION").exists()
    print(
        f"{'resuming' if kept else 'starting'} the stack in {root} "
        f"(PostgreSQL, S3 endpoint, MLflow, Prefect, alert relay, Alertmanager, Prometheus, {args.workers} workers) ...",
        flush=True,
    )
    state = stack.up(root, Paths().store_root, args.workers, pin=args.pin)
    if state["recovered"]:
        print(f"ended what an unclean stop left running: {', '.join(state['recovered'])}")
    if state["resumed"]:
        print(f"resumed the databases of the last stack; {state['s3']['restored']} S3 objects put back")
    _print_status(root)
    if state["monitoring"] != "on":
        print(f"Prometheus and Alertmanager {state['monitoring']}: the stack runs without them")
    print(f"Prefect automations alerting through the relay: {', '.join(state['automations'])}")
    _print_missing(root)
    where = f" --dir {shlex.quote(args.dir)}" if args.dir else ""
    print(f'\nTo use it from this shell: eval "$(fmnist stack env{where})". The DVC remote `stack` is in .dvc/config.local.\n')
    print("\n".join(_exports(root)))


def env(args) -> None:
    print("\n".join(_exports(_root(args))))


def status(args) -> None:
    root = _root(args)
    if not stack.is_up(root):
        kept = (root / "postgres").exists()
        print(f"no stack runs in {root}" + ("; its data is kept: `fmnist stack up` resumes it" if kept else ""))
        return
    _print_status(root)
    _print_missing(root)


def _print_status(root: Path) -> None:
    rows = stack.status(root)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  pid {r['pid']:<7}  {'running' if r['running'] else 'STOPPED'}  {r['url']}")


def _print_missing(root: Path, shown: int = 5) -> None:
    """What the registry and dvc.lock name but the S3 endpoint lacks: a count and the first few of each."""
    from pipeline.stack.audit import missing

    state = stack.load(root)
    if not next(r["running"] for r in stack.status(root) if r["name"] == "s3"):
        print("the S3 endpoint is not running: cannot check what it holds")
        return
    lost = missing(state, stack.environment(state)["MLFLOW_TRACKING_URI"])
    fixes = {
        "models": "registered versions whose model files the S3 endpoint lacks (lost in an unclean stop; register them again)",
        "dvc": "DVC-tracked outputs (dvc.lock, .dvc files) the DVC remote lacks (`dvc push` from a checkout that has them)",
    }
    for kind, labels in lost.items():
        if labels:
            more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
            print(f"MISSING: {len(labels)} {fixes[kind]}: {', '.join(labels[:shown])}{more}")
    if not any(lost.values()):
        print("the S3 endpoint holds every model the registry names and every output dvc.lock names")


def down(args) -> None:
    root = _root(args)
    report = stack.down(root, Paths().store_root, purge=args.purge)
    if not report["running"]:
        print(f"no stack runs in {root}: nothing to stop" + (f"; removed {root}" if args.purge else ""))
        return
    saved = report["saved"]
    kept = f"; S3 objects copied to {root / 's3'} ({saved['copied']} new, {saved['kept']} kept)" if saved else ""
    print(
        f"stopped {', '.join(report['stopped']) or 'nothing (no process was running)'}{kept}"
        + (f"; removed {root}" if args.purge else "")
    )
