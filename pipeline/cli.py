"""The ``fmnist`` command line (also ``python -m pipeline``).

Each subcommand imports its module only when it runs, so ``fmnist --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from pipeline.config import ConfigError
from pipeline.data import DataError

# Errors that are the user's input, not a bug: print the message (which names the fix), no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError)


def _setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's ``main`` with logging; user errors exit 2 with their message only."""
    _setup_logging()
    try:
        main()
    except USER_ERRORS as exc:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Fashion-MNIST CNN pipeline: DVC stages, MLflow tracking and registry, Prefect flows."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("download", help="fetch and verify the four official files into data/raw/").set_defaults(
        func=_stage("download")
    )
    sub.add_parser("prepare", help="validate IDX files, split train/val/test into data/prepared/").set_defaults(
        func=_stage("prepare")
    )

    p = sub.add_parser("train", help="train one variant (same code path as the DVC stage)")
    p.add_argument("variant")
    p.add_argument("--epochs", type=int, help="override the variant's epochs")
    p.add_argument("--limit", type=int, help="train on the first N training images only")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate one trained variant on the test set")
    p.add_argument("variant")
    p.set_defaults(func=_evaluate)

    sub.add_parser("summarize", help="write reports/summary.md from reports/metrics/*.json").set_defaults(
        func=_stage("summarize")
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.func(args))
