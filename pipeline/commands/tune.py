"""``fmnist tune STUDY``: run a study of ``params.yaml``'s ``tune:`` section here; ``--confirm``, ``--apply NAME`` and
``--dashboard`` after it.

With ``--workers POOL`` the study runs on a pool's workers instead: :func:`pipeline.orchestration.commands.tune_cli`.
"""

from __future__ import annotations

import os
import signal

from pipeline.adapters import params_file, studies
from pipeline.adapters.mlflow.tuning import shown
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import load_tensorflow
from pipeline.core.config import load_params
from pipeline.services import confirmation, tuning


def cli(args) -> None:
    params, paths = load_params(), Paths()
    spec = tuning.study_spec(params, args.study)
    if args.dashboard:
        cmd = studies.dashboard_command(studies.storage_url(paths), args.host, args.port)
        print(f"+ optuna-dashboard {shown(cmd[1])} on http://{args.host}:{args.port}", flush=True)
        os.execv(cmd[0], cmd)
    if args.apply:
        best = tuning.best_settings(params, paths, args.study)
        tta = params.evaluate.tta_of(spec.variant)
        note = f"from `fmnist tune {args.study}`: trial {best['trial']}, val_accuracy {best['value']:.4f} (a search's best)"
        keep_tta = tta != "none" and (best["settings"].get("augment.flip", params.variant(spec.variant).augment.flip))
        params_file.add_variant(paths.params, args.apply, spec.variant, best["settings"], note, tta if keep_tta else None)
        print(
            f"params.yaml: variant {args.apply} = {spec.variant} with {best['settings']}; `dvc repro` trains it on all the data"
        )
        return
    load_tensorflow()
    if args.confirm is not None:
        result = confirmation.confirm(params, paths, args.study, args.confirm or None, **overrides(args))
        for label, c in result["candidates"].items():
            print(f"{label}: test {c['test_mean']:.2%} (sd {100 * c['test_sd']:.2f} points, lowest {c['test_min']:.2%}) "
                  f"over {result['seeds']} seeds, {c['fit_seconds_mean']:.0f} s of fitting")  # fmt: skip
        print(f"report: {paths.tune_reports / (args.study + '.md')}")
        return
    stop_as_ctrl_c()
    summary = tuning.tune(params, paths, args.study, **overrides(args))
    show(args.study, summary, paths)


def stop_as_ctrl_c() -> None:
    """Ctrl-C and ``kill`` (SIGTERM) both stop a study as Ctrl-C does: the trial in flight fails (and runs again next
    time) and the study's run closes KILLED. SIGINT's handler is put back too: a shell starts a background job
    (``nohup fmnist tune STUDY &``) with SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def overrides(args) -> dict:
    """The command's ``--trials``, ``--timeout``, ``--limit`` and ``--epochs``, as :func:`pipeline.services.tuning.plan` takes them."""
    return {"trials": args.trials, "timeout_s": args.timeout, "limit": args.limit, "epochs": args.epochs}


def show(study: str, summary: dict, paths: Paths) -> None:
    """Print a study's outcome: its trial counts, where it is stored, its best trial and its report."""
    c = summary["counts"]
    print(f"study {study}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed "
          f"(storage {summary['storage']}, MLflow run {summary['mlflow_run_id']})")  # fmt: skip
    if summary["best"]:
        best = summary["best"][0]
        print(f"best: trial {best['number']}, val_accuracy {best['value']:.4f}, {best['params']}")
    print(f"report: {paths.tune_reports / (study + '.md')}")
