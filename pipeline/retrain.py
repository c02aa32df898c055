"""The retraining loop's steps, which ``pipeline/flows.py`` runs as Prefect tasks, and its commands.

``fmnist retrain [--force]`` runs the loop once: intake (``pipeline/intake.py``), drift against
the training data (``pipeline/drift.py``, with the champion's predictions), then, if there is
new data, the pipeline is out of date, drift is over a threshold or ``--force`` is given, the
training flow (``dvc repro`` stage by stage, ending with the champion/challenger gate).
``fmnist schedule`` serves it on the cron in ``retrain.cron`` (UTC).

At most one retraining runs at a time in a project: each holds an exclusive ``flock`` on
``.dvc/tmp/retrain.lock``. A second one stops at once with a message naming the holder; the
kernel releases the lock when the holder exits, even if it crashed, so it never blocks forever.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import drift
from pipeline.config import Params, Paths, PipelineError, load_params
from pipeline.images import MAX_BATCH
from pipeline.io import load_split
from pipeline.run import dvc_command


class Busy(PipelineError):
    """Another retraining holds the lock."""


_held: set[Path] = set()  # locks this process holds: the training flow inside a retraining takes it again


def lock_path(paths: Paths) -> Path:
    return paths.root / ".dvc" / "tmp" / "retrain.lock"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the retraining lock, or raise Busy at once; re-entrant within one process."""
    path = path.resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel when this process ends
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise Busy(
                f"another retraining is running ({holder}); this one stops here. At most one runs at a time: "
                f"the lock {path} is released when that run ends, even if it crashes"
            ) from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        fh.flush()
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def stale_stages() -> list[str]:
    """The stages ``dvc status`` finds out of date (changed dependencies, params or missing outputs)."""
    cmd, env = dvc_command("status", "--json")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc status failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return sorted(json.loads(proc.stdout or "{}"))


def lock_hashes(root: Path) -> dict[str, str]:
    """The DVC hashes of the accepted data (input) and the prepared data (output) in ``dvc.lock``."""
    import yaml

    lock = root / "dvc.lock"
    stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {}) if lock.exists() else {}
    found = {e["path"]: e.get("md5", "") for e in stage.get("deps", []) + stage.get("outs", [])}
    return {k: found.get(k, "") for k in ("data/accepted", "data/prepared")}


def _predicted(model, x: np.ndarray) -> np.ndarray:
    """The class index the served model predicts for each uint8 image (N, 28, 28), in allowed batch sizes."""
    out = [model.predict(x[i : i + MAX_BATCH])["class_index"].to_numpy() for i in range(0, len(x), MAX_BATCH)]
    return np.concatenate(out) if out else np.zeros(0, int)


def measure_drift(paths: Paths, params: Params, batch: Path) -> drift.DriftReport:
    """Drift of a new batch against the current training split; the class shift uses the champion, if any."""
    from pipeline import tracking

    x_new, _ = load_split(batch)
    x_ref, _ = load_split(paths.prepared / "train.npz")
    cfg = params.retrain
    pred_ref = pred_new = None
    champion = tracking.alias_version(params.registry.model_name, "champion")
    if champion:
        model = tracking.load_version(params.registry.model_name, champion)
        rng = np.random.default_rng(params.base.seed)
        sample = rng.choice(len(x_ref), min(cfg.reference_size, len(x_ref)), replace=False)
        pred_ref, pred_new = _predicted(model, x_ref[sample]), _predicted(model, x_new)
    return drift.measure(
        x_ref,
        x_new,
        psi_threshold=cfg.psi_threshold,
        class_shift_threshold=cfg.class_shift_threshold,
        pred_ref=pred_ref,
        pred_new=pred_new,
    )


def drift_figure(report: drift.DriftReport, class_names: tuple[str, ...]):
    """Pixel-intensity histograms and predicted-class shares, training vs new data, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pix, cls) = plt.subplots(1, 2, figsize=(12, 4))
    edges = np.arange(drift.BINS) * (256 // drift.BINS)
    for shares, label, offset in ((report.pixels_ref, "training", -3), (report.pixels_new, "new", 3)):
        pix.bar(edges + 8 + offset, shares, width=6, label=label)
    pix.set(yscale="log", xlabel="pixel intensity (bin start)", ylabel="share of pixels")
    pix.set_title(f"pixel intensities: PSI {report.pixel_psi:.3f} (threshold {report.psi_threshold})")
    pix.legend()
    if report.classes_ref is not None:
        for shares, label, offset in ((report.classes_ref, "training", -0.2), (report.classes_new, "new", 0.2)):
            cls.bar(np.arange(10) + offset, shares, width=0.4, label=label)
        cls.set_xticks(range(10), class_names, rotation=45, ha="right")
        cls.set_title(f"champion's predicted classes: TVD {report.class_shift:.3f} (threshold {report.class_shift_threshold})")
        cls.legend()
    else:
        cls.text(0.5, 0.5, "no champion yet: no class shift", ha="center", va="center")
        cls.set_axis_off()
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Plan:
    """Whether to retrain, and every reason that says so (or why not)."""

    retrain: bool
    reasons: tuple[str, ...]


def plan(accepted_images: int, report: drift.DriftReport | None, stale: list[str], force: bool) -> Plan:
    """Retrain when there is new data, drift over a threshold, an out-of-date pipeline, or ``force``."""
    reasons = [f"{accepted_images} new images accepted"] if accepted_images else []
    reasons += report.reasons if report else []
    reasons += [f"pipeline out of date (dvc status: {', '.join(stale)})"] if stale else []
    reasons += ["forced (--force)"] if force else []
    if reasons:
        return Plan(True, tuple(reasons))
    return Plan(False, ("nothing new: no new images accepted and the pipeline is up to date",))


def _flows():
    """``pipeline.flows`` (it imports prefect: only for the commands that run a flow), with httpx quiet."""
    from pipeline import flows

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    return flows


def cli(args) -> None:
    """``fmnist retrain``: run the retraining flow once and print what it did."""
    state = _flows().retraining_flow(force=args.force, fan_out=args.fan_out or None, return_state=True)
    if state.is_cancelled():
        raise Busy(state.message)
    result = state.result()  # raises the flow's error if it failed
    print(result["message"])


def flow_cli(args) -> None:
    """``fmnist flow``: the training flow once (every DVC stage as a Prefect task) and the gate's decision."""
    flows = _flows()
    start = time.perf_counter()  # the flow call alone, as the bench reads it
    record = flows.training_flow(force=args.force, fan_out=args.fan_out or None)
    gate = f"{record['decision']}: {record['variant']} v{record['challenger_version']}" if record else "not run yet"
    print(f"training flow done in {time.perf_counter() - start:.1f} s; last gate decision: {gate}")


def schedule_cli(args) -> None:
    """``fmnist schedule``: serve the retraining flow on ``retrain.cron`` (UTC) until interrupted."""
    _flows().serve(load_params())
