"""``fmnist flow``, ``fmnist retrain``, ``fmnist monitor``, ``fmnist schedule`` and ``fmnist tune``: the Prefect flows from the
command line."""

from __future__ import annotations

import logging
import os
import time

from pipeline.adapters.files import write_json
from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params

# Without PREFECT_API_URL a flow starts a temporary Prefect server, and Prefect gives it 20 s to come up: on a busy
# 2-core machine it can take longer (the test suite saw it), and the command then fails before any stage runs.
EPHEMERAL_STARTUP_S = "90"


def _flows():
    """``pipeline.orchestration.flows`` (it imports prefect: only for the commands that run a flow), with httpx quiet."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_S)  # the user's wins
    from pipeline.orchestration import flows

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    return flows


def cli(args) -> None:
    """``fmnist retrain``: run the retraining flow once and print what it did."""
    flows = _flows()
    flows.refuse_forced_workers(args.force, args.workers)  # before the flow's intake, and before a Prefect server starts
    state = flows.retraining_flow(force=args.force, fan_out=args.fan_out or None, workers=args.workers, return_state=True)
    if state.is_cancelled():
        raise flows.Busy(state.message)
    result = state.result()  # raises the flow's error if it failed
    print(result["message"])


def flow_cli(args) -> None:
    """``fmnist flow``: the training flow once (every DVC stage as a Prefect task) and the gate's decision."""
    flows = _flows()
    flows.refuse_forced_workers(args.force, args.workers)  # before a Prefect server starts
    start = time.perf_counter()  # the flow call alone: the bench compares it with the process's wall time
    record = flows.training_flow(force=args.force, fan_out=args.fan_out or None, workers=args.workers)
    seconds = time.perf_counter() - start
    write_json(Paths().run_record, {"command": "fmnist flow", "flow_seconds": round(seconds, 2)})
    gate = f"{record['decision']}: {record['variant']} v{record['challenger_version']}" if record else "not run yet"
    print(f"training flow done in {seconds:.1f} s; last gate decision: {gate}")


def monitor_cli(args) -> None:
    """``fmnist monitor``: the monitoring flow once; prints its verdict (``--json``: the window)."""
    import json

    summary = _flows().monitoring_flow()
    print(json.dumps(summary, indent=2) if args.json else summary["message"])


def schedule_cli(args) -> None:
    """``fmnist schedule``: serve the retraining flow on ``retrain.cron`` (UTC) until interrupted."""
    _flows().serve(load_params())


def tune_cli(args) -> None:
    """``fmnist tune``: with ``--workers POOL`` the study's trials run on the pool's workers; without, here."""
    from pipeline.adapters import studies
    from pipeline.commands import tune

    if not args.workers or args.apply or args.dashboard or args.confirm is not None:
        tune.cli(args)
        return
    from pipeline.orchestration.tuning import refuse_unshared, tune_flow

    refuse_unshared(studies.storage_url(Paths()))  # before a flow, or a temporary Prefect server, starts
    _flows()  # Prefect's start-up settings, httpx quiet
    summary = tune_flow(study=args.study, pool=args.workers, overrides=tune.overrides(args))
    for record in summary["workers"]:
        print(f"{record.get('worker', '?')}: trials {record.get('trials') or 'none'} ({record['flow_run']})")
    tune.show(args.study, summary, Paths())
