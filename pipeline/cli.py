"""The ``fmnist`` command line (also ``python -m pipeline``): argparse only.

Each subcommand names the function that runs it as ``"module:function"``, imported only when
it runs, so ``fmnist --help`` is instant and no command loads what another needs.
"""

from __future__ import annotations

import argparse
import importlib


def _handler(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _add(sub, name: str, target: str, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(target=target)
    return parser


def _flow_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"retrain every variant even if {what}")
    parser.add_argument("--fan-out", action="store_true", help="train the variants as concurrent task runs")
    parser.add_argument(
        "--workers",
        metavar="POOL",
        help="train and evaluate each variant on a worker of this Prefect work pool (its own clone; data through the "
        "default DVC remote); default: here",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Fashion-MNIST CNN pipeline: DVC stages, MLflow tracking and registry, Prefect flows."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "run", "pipeline.commands.run:cli", "run the whole pipeline with `dvc repro`, timing it")
    p.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    _add(sub, "download", "pipeline.cli:_download", "fetch and verify the four official files into data/raw/")
    _add(sub, "prepare", "pipeline.cli:_prepare", "validate IDX files, split train/val/test into data/prepared/")
    p = _add(sub, "train", "pipeline.cli:_train", "train one variant (same code path as the DVC stage)")
    p.add_argument("variant")
    p.add_argument("--epochs", type=int, help="override the variant's epochs")
    p.add_argument("--limit", type=int, help="train on a seeded random N of the training images")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p = _add(sub, "evaluate", "pipeline.cli:_evaluate", "evaluate one trained variant on the test set")
    p.add_argument("variant")
    _add(sub, "summarize", "pipeline.cli:_summarize", "write reports/summary.md from reports/metrics/*.json")
    _add(sub, "register", "pipeline.cli:_register", "register the best variant and run the champion/challenger gate")

    p = _add(sub, "promote", "pipeline.commands.promote:cli", "run the gate for a version (default: alias 'challenger')")
    p.add_argument("--version", help="registered version number (default: the 'challenger' alias)")
    p.add_argument("--json", action="store_true", help="print the whole promotion record as JSON")
    p = _add(
        sub,
        "rollback",
        "pipeline.commands.promote:rollback_cli",
        "move 'champion' back to 'previous' or --to an earlier champion (and 'previous' to the rolled-back one)",
    )
    p.add_argument("--to", help="a version that was champion before (default: the 'previous' alias)")
    p = _add(
        sub, "history", "pipeline.commands.history:cli", "every move of the registry's aliases: when, from, to, by whom, why"
    )
    p.add_argument("--alias", help="only this alias's moves (champion, challenger, previous)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p = _add(sub, "card", "pipeline.commands.card:cli", "print a version's model card (default: the champion's)")
    p.add_argument("--version", help="version number or alias (default: champion)")
    p.add_argument("--model", action="store_true", help="print the registered model's card instead")
    p = _add(
        sub,
        "lineage",
        "pipeline.commands.lineage:cli",
        "a version or alias back to its commit, DVC experiment, dvc.lock hashes and runs; a run id or experiment to its versions",
    )
    p.add_argument("ref", help="version number, alias (champion), MLflow run id or DVC experiment name")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p = _add(
        sub, "serve", "pipeline.commands.serve:serve", "serve the champion (or --version) over HTTP: MLflow's scoring protocol"
    )
    p.add_argument("--version")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5001)
    p = sub.add_parser("stack", help="the team's servers on this machine: PostgreSQL, S3, MLflow, Prefect, workers")
    stack = p.add_subparsers(dest="stack_command", required=True, metavar="{up,env,status,down}")
    for name, help_text in (
        ("up", "start the stack on 127.0.0.1, or resume the one taken down, and print the variables to export"),
        ("env", 'print only the export lines of the running stack: eval "$(fmnist stack env)"'),
        ("status", "what runs, with its pid and address, and what the S3 endpoint lacks"),
        ("down", "stop every process of the stack, keeping its data for the next up"),
    ):
        q = _add(stack, name, f"pipeline.commands.stack:{name}", help_text)
        q.add_argument("--dir", help="the stack's folder: all its state (default: .stack at the repository root)")
        if name == "up":
            q.add_argument("--workers", type=int, default=2, help="Prefect process workers, each in its own clone (default 2)")
            q.add_argument(
                "--pin", action="store_true", help="pin worker i to core i-1 alone, as if each were a one-core machine"
            )
        if name == "down":
            q.add_argument(
                "--purge", action="store_true", help="also remove the folder (the databases, the S3 copy, the clones, the logs)"
            )
    p = _add(sub, "ui", "pipeline.commands.serve:ui", "start the MLflow UI on this project's store")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p = _add(
        sub, "predict", "pipeline.commands.predict:cli", "classify PNG/JPEG files or an .npz with the champion (or --version)"
    )
    p.add_argument("paths", nargs="+")
    p.add_argument("--version")
    p.add_argument("--json", action="store_true", help="print JSON with all ten probabilities")
    p.add_argument("--server", metavar="URL", help="send the images to a running `fmnist serve` (e.g. http://127.0.0.1:5001)")
    p.add_argument("--batch-size", type=int, default=1000, help="images per request with --server (default 1000)")

    _add(
        sub, "intake", "pipeline.commands.intake:cli", "validate data/incoming/: accept into data/accepted/, quarantine the rest"
    )
    p = _add(
        sub,
        "simulate-new-data",
        "pipeline.commands.simulate:cli",
        "move N unused reserve images into data/incoming/ as PNG files",
    )
    p.add_argument("n", type=int, metavar="N")
    p = _add(
        sub,
        "flow",
        "pipeline.orchestration.commands:flow_cli",
        "run the training flow once: every DVC stage as a Prefect task, then the gate",
    )
    _flow_options(p, "nothing changed")
    p = _add(
        sub,
        "retrain",
        "pipeline.orchestration.commands:cli",
        "run the retraining flow once: intake, drift, training and gate if anything is new",
    )
    _flow_options(p, "nothing is new")
    p = _add(
        sub,
        "monitor",
        "pipeline.orchestration.commands:monitor_cli",
        "check the last window of served traffic (data/predictions/) for drift against the champion's training data",
    )
    p.add_argument("--json", action="store_true", help="print the window as JSON")
    _add(
        sub,
        "schedule",
        "pipeline.orchestration.commands:schedule_cli",
        "serve the retraining flow on retrain.cron (UTC) with Prefect",
    )

    p = _add(
        sub,
        "tune",
        "pipeline.orchestration.commands:tune_cli",
        "run an Optuna study of params.yaml's tune: section, tracked in MLflow",
    )
    p.add_argument("study", help="a study of params.yaml's tune: section")
    p.add_argument("--trials", type=int, help="complete or pruned trials the study ends with (default: the study's)")
    p.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds (default: the study's)")
    p.add_argument("--limit", type=int, help="train each trial on a seeded random N of the training images")
    p.add_argument("--epochs", type=int, help="each trial's epochs (default: the variant's, capped by max_epochs)")
    p.add_argument(
        "--workers",
        metavar="POOL",
        help="run the trials on the workers of this Prefect work pool, one each at a time (default: here)",
    )
    p.add_argument(
        "--confirm",
        metavar="N",
        type=int,
        nargs="?",
        const=0,
        help="train the best trial and the hand-tuned reference on N seeds the search never used (default: the study's)",
    )
    p.add_argument("--apply", metavar="NAME", help="write the best trial's settings into params.yaml as variant NAME")
    p.add_argument("--dashboard", action="store_true", help="serve optuna-dashboard over the study's storage")
    p.add_argument("--host", default="127.0.0.1", help="--dashboard's address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="--dashboard's port (default: 8080)")

    p = _add(
        sub, "bench", "benchmarks.bench:cli", "benchmark against the tutorial's plain script; writes reports/benchmarks.{json,md}"
    )
    p.add_argument("--quick", action="store_true", help="tiny subsets, one repetition: checks that the suite runs")
    p.add_argument("--out", help="folder for benchmarks.json and benchmarks.md (default: reports/)")
    p.add_argument("--fast-variant", metavar="NAME", help="params.yaml variant to time to 92%% (default: the bench's candidates)")
    p.add_argument("--only", metavar="KEYS", help="comma-separated measures to take again into the existing report in --out")
    return parser


# The stages from the command line: the same main() as `python -m pipeline.stages.<stage>` under DVC.
def _download(args) -> None:
    _handler("pipeline.stages.download:main")()


def _prepare(args) -> None:
    _handler("pipeline.stages.prepare:main")()


def _train(args) -> None:
    _handler("pipeline.stages.train:main")(args.variant, epochs=args.epochs, limit=args.limit, track=not args.no_mlflow)


def _evaluate(args) -> None:
    _handler("pipeline.stages.evaluate:main")(args.variant)


def _summarize(args) -> None:
    _handler("pipeline.stages.summarize:main")()


def _register(args) -> None:
    _handler("pipeline.stages.register:main")()


# The commands that load TensorFlow: it is loaded first, with its start-up notes hidden.
USE_TENSORFLOW = {"train", "evaluate", "register", "bench", "tune"}  # promote and predict: once their inputs are checked


def main(argv: list[str] | None = None) -> None:
    from pipeline.adapters.process import run_entry

    args = build_parser().parse_args(argv)
    run_entry(lambda: _handler(args.target)(args), tensorflow=args.command in USE_TENSORFLOW)
