"""``fmnist stack up | status | down``: the team's servers on this machine (:mod:`pipeline.adapters.stack`)."""

from __future__ import annotations

import shlex
from pathlib import Path

from pipeline.adapters import stack
from pipeline.adapters.paths import Paths


def _root(args) -> Path:
    return Path(args.dir) if args.dir else Paths().store_root / ".stack"


def up(args) -> None:
    root = _root(args)
    print(f"starting the stack in {root} (PostgreSQL, S3 endpoint, MLflow, Prefect, {args.workers} workers) ...", flush=True)
    state = stack.up(root, Paths().store_root, args.workers, pin=args.pin)
    _print_status(root)
    print("\nexport these to use it (the DVC remote `stack` is in .dvc/config.local):\n")
    for key, value in stack.environment(state).items():
        print(f"export {key}={shlex.quote(value)}")


def status(args) -> None:
    _print_status(_root(args))


def _print_status(root: Path) -> None:
    rows = stack.status(root)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  pid {r['pid']:<7}  {'running' if r['running'] else 'STOPPED'}  {r['url']}")


def down(args) -> None:
    root = _root(args)
    stopped = stack.down(root, purge=args.purge)
    print(f"stopped {', '.join(stopped) or 'nothing (no process was running)'}" + (f"; removed {root}" if args.purge else ""))
