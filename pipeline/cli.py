"""The ``fmnist`` command line (also ``python -m pipeline``).

Each subcommand imports its module only when it runs, so ``fmnist --help`` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
from collections.abc import Callable

from pipeline.config import PipelineError


def _setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's ``main`` with logging; user errors exit 2 with their message only.

    At exit, ``gc.freeze()`` spares the process the full garbage collections that interpreter
    shutdown runs over TensorFlow's and MLflow's objects: 1.3-1.7 s of each train and evaluate
    stage here (medians of 3, alternating). Exit handlers still run and the OS frees the memory;
    only the finalizers of objects left in reference cycles are skipped (the stages close their
    files and runs themselves).
    """
    _setup_logging()
    atexit.register(gc.freeze)
    try:
        main()
    except PipelineError as exc:  # the user's input, not a bug: the message names the fix
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _train(args: argparse.Namespace) -> None:
    from pipeline import train

    train.main(args.variant, epochs=args.epochs, limit=args.limit, track=not args.no_mlflow)


def _evaluate(args: argparse.Namespace) -> None:
    from pipeline import evaluate

    evaluate.main(args.variant)


def _stage(module: str) -> Callable[[argparse.Namespace], None]:
    def run(_: argparse.Namespace) -> None:
        import importlib

        importlib.import_module(f"pipeline.{module}").main()

    return run


def _delegate(module: str, function: str = "cli") -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        import importlib

        getattr(importlib.import_module(f"pipeline.{module}"), function)(args)

    return run


def _bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside pipeline/ in the checkout
    from benchmarks import bench

    bench.cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Fashion-MNIST CNN pipeline: DVC stages, MLflow tracking and registry, Prefect flows."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline with `dvc repro`, timing it")
    p.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    p.set_defaults(func=_delegate("run", "cli"))

    sub.add_parser("download", help="fetch and verify the four official files into data/raw/").set_defaults(
        func=_stage("download")
    )
    sub.add_parser("prepare", help="validate IDX files, split train/val/test into data/prepared/").set_defaults(
        func=_stage("prepare")
    )

    p = sub.add_parser("train", help="train one variant (same code path as the DVC stage)")
    p.add_argument("variant")
    p.add_argument("--epochs", type=int, help="override the variant's epochs")
    p.add_argument("--limit", type=int, help="train on a seeded random N of the training images")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate one trained variant on the test set")
    p.add_argument("variant")
    p.set_defaults(func=_evaluate)

    sub.add_parser("summarize", help="write reports/summary.md from reports/metrics/*.json").set_defaults(
        func=_stage("summarize")
    )
    sub.add_parser("register", help="register the best variant and run the champion/challenger gate").set_defaults(
        func=_stage("register")
    )

    p = sub.add_parser("promote", help="run the gate for a version (default: alias 'challenger')")
    p.add_argument("--version", help="registered version number (default: the 'challenger' alias)")
    p.set_defaults(func=_delegate("promote", "cli"))

    sub.add_parser("rollback", help="move 'champion' back to 'previous' (and 'previous' to the rolled-back one)").set_defaults(
        func=_delegate("promote", "rollback_cli")
    )

    p = sub.add_parser("serve", help="serve the champion (or --version) over HTTP with `mlflow models serve`")
    p.add_argument("--version")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5001)
    p.set_defaults(func=_delegate("serve", "serve"))

    p = sub.add_parser("ui", help="start the MLflow UI on this project's store")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_delegate("serve", "ui"))

    p = sub.add_parser("predict", help="classify PNG/JPEG files or an .npz with the champion (or --version)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--version")
    p.add_argument("--json", action="store_true", help="print JSON with all ten probabilities")
    p.set_defaults(func=_delegate("predict", "cli"))

    sub.add_parser("intake", help="validate data/incoming/: accept into data/accepted/, quarantine the rest").set_defaults(
        func=_delegate("intake", "cli")
    )
    p = sub.add_parser("simulate-new-data", help="move N unused reserve images into data/incoming/ as PNG files")
    p.add_argument("n", type=int, metavar="N")
    p.set_defaults(func=_delegate("simulate", "cli"))

    p = sub.add_parser("flow", help="run the training flow once: every DVC stage as a Prefect task, then the gate")
    p.add_argument("--force", action="store_true", help="retrain every variant even if nothing changed")
    p.add_argument("--fan-out", action="store_true", help="train the variants as concurrent task runs")
    p.set_defaults(func=_delegate("retrain", "flow_cli"))

    p = sub.add_parser("retrain", help="run the retraining flow once: intake, drift, training and gate if anything is new")
    p.add_argument("--force", action="store_true", help="retrain every variant even if nothing is new")
    p.add_argument("--fan-out", action="store_true", help="train the variants as concurrent task runs")
    p.set_defaults(func=_delegate("retrain", "cli"))

    sub.add_parser("schedule", help="serve the retraining flow on retrain.cron (UTC) with Prefect").set_defaults(
        func=_delegate("retrain", "schedule_cli")
    )

    p = sub.add_parser("bench", help="benchmark against the tutorial's plain script; writes reports/benchmarks.{json,md}")
    p.add_argument("--quick", action="store_true", help="tiny subsets, one repetition: checks that the suite runs")
    p.add_argument("--out", help="folder for benchmarks.json and benchmarks.md (default: reports/)")
    p.add_argument("--fast-variant", metavar="NAME", help="params.yaml variant to time to 92%% (default: 'fast' if defined)")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.func(args))
