"""Profiling probes behind the tuned settings: training throughput of the tutorial's model per setting.

Each probe trains on the first N prepared images (no validation) after a short warm-up fit,
and reports seconds per 55,000 images (one epoch of the project's training split). Thread
settings only take effect before TensorFlow starts, so those probes run in a fresh process:
``python -m benchmarks.profile --threads INTRA,INTER SPEC...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks.common import Mode, row

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
        start = time.perf_counter()
        model.fit(**data, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) * EPOCH / len(y))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(PROBES))
    parser.add_argument("--threads", help="INTRA,INTER", required=True)
    parser.add_argument("--n", type=int, default=12_800)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import tensorflow as tf

    intra, inter = map(int, args.threads.split(","))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from pipeline.adapters.files import load_split

    x, y = load_split("data/prepared/train.npz")
    print(json.dumps(probe(x[: args.n], y[: args.n], PROBES[args.name], args.reps)))


if __name__ == "__main__":
    main()
