"""The reliability report: the fault, bad-input and concurrency tests, with the long repetitions.

    .venv/bin/python tests/reliability.py [--soak-minutes 10]   # about 40 minutes on 2 cores; writes reports/reliability.md

The same tests run in the suite with few rounds; here ``FMNIST_RELIABILITY_LOG`` is set, so
``conftest.repeats`` gives them their long counts (50 promotion races, 10 kills of a training,
30 kills of a promotion) and each records its figures for the report. Then the server soak
(``python -m benchmarks.soak``) runs on the checkout's champion: no failed request and a resident
memory that ends within a quarter of its first minute's, with a swap in the middle. Exits non-zero
when any case fails; the report then says which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from benchmarks.serving import machine_name
from pipeline.adapters.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

AREAS: dict[str, list[str]] = {
    "Corrupt data (each of the four files; a corrupted prepared .npz)": [
        "tests/test_data.py",
        "tests/test_train.py::test_corrupt_prepared_data_in_the_dvc_cache_is_not_trained_on",
    ],
    "Bad params (rejected before any work, key path named)": [
        "tests/test_config.py::test_malformed_params_are_rejected_with_the_key_path",
        "tests/test_config.py::test_dvc_repro_fails_before_any_work",
    ],
    "Killed training (kill -9 at a random epoch, then rerun)": [
        "tests/test_train.py::test_killed_training_resumes_from_its_last_completed_epoch",
        "tests/test_tracking.py::test_runs_left_running_by_dead_processes_are_marked_failed_at_the_next_start",
    ],
    "Divergence (absurd learning rate, NaN/Inf loss)": [
        "tests/test_train.py::test_absurd_learning_rate_fails_within_the_first_epoch",
        "tests/test_train.py::test_divergence_guard_stops_nan_infinite_and_exploded_losses",
        "tests/test_tracking.py::test_a_failing_training_leaves_its_run_failed_not_running",
        "tests/test_pipeline_e2e.py::test_diverging_variant_fails_the_pipeline_and_keeps_the_champion",
    ],
    "Concurrency (MLflow writers, promotion races on one store and across clones, dvc repro, retraining flows)": [
        "tests/test_concurrency.py",
        "tests/test_promote.py::test_racing_promotions_end_with_the_better_model_as_champion_every_time",
        "tests/test_promote.py::test_without_the_lock_the_race_is_real_and_the_worse_model_wins",
        "tests/test_registry_shared.py",
        "tests/test_flows.py::test_second_retraining_is_cancelled_and_a_crashed_holder_blocks_nothing",
    ],
    "Atomic promotion (kill -9 at a random point of the gate)": [
        "tests/test_promote.py::test_a_promotion_killed_at_any_point_leaves_a_champion_that_loads_and_matches_its_hash",
    ],
    "Past one machine (the team stack: a worker SIGKILLed mid-variant while MLflow restarts, the stack down and up, the S3 "
    "endpoint down mid-log, every process SIGKILLed, a commit a worker's remote lacks, the servers' alerts)": [
        "tests/test_stack.py",
        "tests/test_stack_drills.py",
    ],
    "Serving under change (the champion promoted, rolled back and corrupted under traffic; a real Prometheus)": [
        "tests/test_follow.py",
    ],
    "Security (localhost binding, model hash and safe mode, hostile input)": [
        "tests/test_serving.py::test_fmnist_serve_and_ui_bind_to_localhost_by_default",
        "tests/test_serving.py::test_server_serves_the_champion_on_localhost_only",
        "tests/test_serving.py::test_bad_requests_get_a_clear_error_and_the_server_keeps_answering",
        "tests/test_serving.py::test_champion_rejects_bad_input_with_a_clear_message",
        "tests/test_promote.py::test_a_tampered_model_is_refused_and_never_promoted",
        "tests/test_predict.py::test_read_inputs_rejects_bad_files_naming_the_file",
        "tests/test_predict.py::test_fmnist_predict_exits_2_with_the_message_and_no_traceback",
        "tests/test_images.py::test_refusals_say_what_was_found",
    ],
}


def _area(nodeid: str) -> str:
    for area, selectors in AREAS.items():
        if any(nodeid == s or nodeid.startswith(s + "::") or nodeid.startswith(s + "[") for s in selectors):
            return area
    return "other"


def _outcomes(junit: Path) -> dict[str, dict]:
    """Per area: cases passed, failed (with names) and skipped (with reasons), and seconds."""
    areas: dict[str, dict] = defaultdict(lambda: {"passed": 0, "failed": [], "skipped": [], "seconds": 0.0})
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        nodeid = f"{path}::{case.get('name')}"
        area = areas[_area(nodeid)]
        area["seconds"] += float(case.get("time", 0))
        if case.find("failure") is not None or case.find("error") is not None:
            area["failed"].append(nodeid)
        elif (skip := case.find("skipped")) is not None:
            area["skipped"].append(f"{nodeid}: {skip.get('message', '')}")
        else:
            area["passed"] += 1
    return areas


def _figures(records: list[dict]) -> list[str]:
    lines = ["| check | figures |", "|---|---|"]
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        grouped[r.pop("check")].append(r)
    for check, rows in grouped.items():
        if check.startswith("training killed"):
            at = sorted(r["epochs_completed_at_kill"] for r in rows)
            text = f"{len(rows)} kills, every rerun resumed and finished; epochs completed at the kill: {at}; duplicate or missing epoch steps: 0"
        else:
            text = "; ".join(f"{k.replace('_', ' ')}: {v}" for r in rows for k, v in r.items())
        lines.append(f"| {check} | {text} |")
    return lines


def _soak(minutes: float, out: Path) -> tuple[list[str], bool]:
    """Run the server soak on this checkout's champion; its table's lines and whether it held."""
    if not (ROOT / "mlflow.db").exists():
        return ["Not run: this checkout has no champion to serve (`make run` first)."], False
    cmd = [sys.executable, "-m", "benchmarks.soak", "--minutes", str(minutes), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return [f"FAILED to run: `{' '.join(cmd[1:])}` exited {proc.returncode}:", "", "```", proc.stderr[-2000:], "```"], False
    doc = json.loads((out / "soak.json").read_text())
    held = doc["failed"] == 0 and doc["rss_mb"]["end"] <= 1.25 * doc["rss_mb"]["first_minute"]
    rss = doc["rss_mb"]
    verdict = "held" if held else "FAILED"
    return [
        "| soak | requests | failed | RSS at 1 min, after (min-max), at the end | swaps (alias moved to first answer) | verdict |",
        "|---|---:|---:|---|---|---|",
        f"| {doc['minutes']:g} min, {doc['clients']} clients, {doc['per_second']:,.0f} requests/s, p50 {doc['p50_ms']:.1f} ms, "
        f"p99 {doc['p99_ms']:.1f} ms | {doc['requests']:,} | {doc['failed']} | {rss['first_minute']:.0f}, "
        f"{rss['min_after_1_min']:.0f}-{rss['max_after_1_min']:.0f}, {rss['end']:.0f} MiB | "
        + "; ".join(f"to {s['to']} at {s['at_s']} s: {s['seconds']:.1f} s" for s in doc["swaps"])
        + f" | {verdict} |",
        "",
        "Held: no request failed, and the resident memory at the end is within a quarter of the first minute's "
        "(`python -m benchmarks.soak`; its own report: `reports/soak.md`).",
    ], held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-minutes", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fmnist-reliability-") as tmp:
        log, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        log.touch()
        selectors = [s for area in AREAS.values() for s in area]
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}", *selectors]
        env = os.environ | {"FMNIST_RELIABILITY_LOG": str(log)}
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env)
        areas = _outcomes(junit)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        soak, held = _soak(args.soak_minutes, ROOT / "reports")
        minutes = (time.monotonic() - started) / 60

    lines = [
        "# Reliability report",
        "",
        "Faults, bad input and concurrency, each proved by a test that fails without the protection.",
        f"Generated by `.venv/bin/python tests/reliability.py` on {time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"{machine_name()}, Python {platform.python_version()}: {minutes:.1f} min, pytest exit code {proc.returncode}.",
        "",
        "| area | cases passed | failed | skipped | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for area in [*AREAS, "other"]:
        if area in areas:
            a = areas[area]
            lines.append(f"| {area} | {a['passed']} | {len(a['failed'])} | {len(a['skipped'])} | {a['seconds']:.0f} |")
    lines += ["", "## Figures from the repeated checks", "", *_figures(records), ""]
    lines += ["## The server under load", "", *soak, ""]
    problems = [f"- FAILED {n}" for a in areas.values() for n in a["failed"]]
    problems += [f"- skipped {s}" for a in areas.values() for s in a["skipped"]]
    if problems:
        lines += ["## Failed or skipped", "", *problems, ""]
    out = ROOT / "reports" / "reliability.md"
    atomic_write_text(out, "\n".join(lines))
    print(f"wrote {out}")
    return proc.returncode or (0 if held else 1)


if __name__ == "__main__":
    sys.exit(main())
