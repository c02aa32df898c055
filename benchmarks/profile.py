"""Profiling probes behind the tuned settings: training throughput of the tutorial's model per setting.

Each probe trains on the first N prepared images (no validation) after a short warm-up fit,
and reports seconds per 55,000 images (one epoch of the project's training split). Thread
settings only take effect before TensorFlow starts, so those probes run in a fresh process:
``python -m benchmarks.profile --threads INTRA,INTER SPEC...``.

A probe times its epoch (``on_train_begin`` to ``on_epoch_end``), not the ``fit`` call. Timed
around ``fit``, half the rows of the earlier table read exactly 22.0 s or 11.0 s: in about half
of the calls, ``fit`` waits after its last callback (``on_train_end``) until a multiple of about
2.56 s since it started (5.11-5.15 s for a 3.2-4.1 s epoch; measured on 2026-12-02 with a
callback that timestamps each step, with and without prefetch or a parallel map in the input
pipeline). The wait is in TensorFlow's teardown as ``fit`` returns, once per call, not in the
training; a pipeline training is one ``fit`` call.

``python -m benchmarks.profile --update reports/benchmarks.json`` measures the table again and
rewrites that report's probe section (with the date and the machine of this measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from benchmarks.common import FULL, EpochTimer, Mode, row

EPOCH = 55_000
# name: (input, batch, precision, steps_per_execution)
PROBES = {
    "float64 arrays (x / 255.0), batch 32: the tutorial": ("f64", 32, "float32", 1),
    "float32 arrays, batch 32": ("f32", 32, "float32", 1),
    "uint8 tf.data, cast in the pipeline, batch 32: the project": ("u8", 32, "float32", 1),
    "uint8 tf.data, batch 32, steps_per_execution 16": ("u8", 32, "float32", 16),
    "uint8 tf.data, batch 128": ("u8", 128, "float32", 1),
    "uint8 tf.data, batch 256": ("u8", 256, "float32", 1),
    "uint8 tf.data, batch 128, mixed_bfloat16": ("u8", 128, "mixed_bfloat16", 1),
    "uint8 tf.data, batch 256, mixed_bfloat16": ("u8", 256, "mixed_bfloat16", 1),
    "uint8 tf.data, batch 512, mixed_bfloat16": ("u8", 512, "mixed_bfloat16", 1),
    "uint8 tf.data, batch 256, mixed_bfloat16, steps_per_execution 8": ("u8", 256, "mixed_bfloat16", 8),
}
QUICK_PROBES = ("float64 arrays (x / 255.0), batch 32: the tutorial", "uint8 tf.data, batch 256, mixed_bfloat16")
THREADS = ("1,1", "2,1", "2,2")  # TensorFlow's (intra-op, inter-op) threads; the default is the core count for both


def _inputs(x: np.ndarray, y: np.ndarray, kind: str, batch: int) -> dict:
    import tensorflow as tf

    if kind == "f64":
        return {"x": (x / 255.0).reshape(-1, 28, 28, 1), "y": y, "batch_size": batch}
    if kind == "f32":
        return {"x": (x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1), "y": y, "batch_size": batch}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    ds = ds.map(lambda a, b: (tf.cast(a[..., None], tf.float32) / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE)
    return {"x": ds.prefetch(tf.data.AUTOTUNE)}


def probe(x: np.ndarray, y: np.ndarray, spec: tuple, reps: int) -> list[float]:
    """Seconds per 55,000 training images for one (input, batch, precision, steps_per_execution) setting."""
    from pipeline.core.models import tutorial_cnn

    kind, batch, precision, spe = spec
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    model = tutorial_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], steps_per_execution=spe)
    model.fit(**_inputs(x[: batch * 8], y[: batch * 8], kind, batch), epochs=1, verbose=0)  # traces the graph
    data, times = _inputs(x, y, kind, batch), []
    for _ in range(reps):
        timer = EpochTimer()
        model.fit(**data, epochs=1, verbose=0, callbacks=[timer])  # the epoch, not the iterator's teardown
        times.append(timer.seconds[0] * EPOCH / len(y))
    keras.mixed_precision.set_global_policy("float32")
    return times


def _thread_probe(threads: str, name: str, n: int, reps: int) -> list[float]:
    cmd = [sys.executable, "-m", "benchmarks.profile", "--threads", threads, "--n", str(n), "--reps", str(reps), name]
    here = str(Path(__file__).resolve().parents[1])  # benchmarks/ importable from any working directory
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def profile(x: np.ndarray, y: np.ndarray, mode: Mode) -> list[dict]:
    """Rows of the 'what we measured' table: throughput per setting, then per thread setting (full mode)."""
    n, reps = (640, 1) if mode.quick else (12_800, 3)
    names = QUICK_PROBES if mode.quick else PROBES
    rows = [row(name, probe(x[:n], y[:n], PROBES[name], reps)) for name in names]
    if not mode.quick:
        name = "uint8 tf.data, batch 256, mixed_bfloat16"
        rows += [row(f"{name}, threads intra,inter = {t}", _thread_probe(t, name, n, reps)) for t in THREADS]
    return rows  # seconds per 55,000 images


def update(report_json: Path) -> None:
    """Measure the probe table again (full mode) and rewrite its section of a benchmark report (json and md)."""
    from benchmarks import report
    from pipeline.adapters.files import load_split
    from pipeline.core.config import load_params

    doc = json.loads(report_json.read_text())
    x, y = load_split("data/prepared/train.npz")
    doc["profile"] = profile(x, y, FULL)
    mc = report.machine()
    doc["profile_measured"] = f"{report.stamp()}, `python -m benchmarks.profile --update`, {mc['cpu']}, {mc['cores']} cores"
    report.write(report_json.parent, doc, load_params())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=list(PROBES))
    parser.add_argument("--threads", help="INTRA,INTER: one probe in this process with these thread settings")
    parser.add_argument("--n", type=int, default=12_800)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--update", type=Path, help="a benchmark report (benchmarks.json) whose probe section to measure again")
    args = parser.parse_args()
    if args.update:
        update(args.update)
        return
    if not (args.name and args.threads):
        parser.error("give --update REPORT, or a probe name and --threads INTRA,INTER")
    import tensorflow as tf

    intra, inter = map(int, args.threads.split(","))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from pipeline.adapters.files import load_split

    x, y = load_split("data/prepared/train.npz")
    print(json.dumps(probe(x[: args.n], y[: args.n], PROBES[args.name], args.reps)))


if __name__ == "__main__":
    main()
