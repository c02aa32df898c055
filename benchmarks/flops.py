"""How much of this machine's arithmetic a training epoch uses: ``python -m benchmarks.flops [VARIANT ...]``.

- Peak: the best of a few large matrix multiplies (4096 x 4096) in float32 and in bfloat16, timed
  in this process, in GFLOP/s (2 n^3 floating-point operations each).
- A variant's epoch: the multiply-adds of its convolutions and dense layers per image (forward), times
  3 for the forward and backward passes, times the 55,000 training images, divided by the time of
  one epoch of its training settings (the second epoch of a two-epoch fit, no validation).
- The oneDNN kernels: one training step in a fresh process with ``ONEDNN_VERBOSE=1``, and the
  implementations it names for convolutions, matrix multiplies and inner products.

Writes ``reports/flops.json`` and ``reports/flops.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EPOCH_IMAGES = 55_000
SIZE = 4096


def peak_gflops(dtype: str, reps: int = 5) -> float:
    """The best GFLOP/s of ``reps`` SIZE x SIZE matrix multiplies in ``dtype`` (after a warm-up)."""
    import tensorflow as tf

    a = tf.random.stateless_normal([SIZE, SIZE], seed=[1, 2], dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, x), tf.float32)))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * SIZE**3 / best / 1e9


def forward_flops(model) -> int:
    """Floating-point operations of one image's forward pass through the convolutions and dense layers (2 per multiply-add)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def epoch_seconds(variant: str) -> tuple[float, object]:
    """One epoch of ``variant``'s training settings on the full training split (the second of two), and the model."""
    import keras

    from pipeline.adapters.files import load_split
    from pipeline.core import training
    from pipeline.core.config import load_params

    cfg = load_params().variant(variant)
    x, y = load_split("data/prepared/train.npz")
    model = training.compile_model(cfg, -(-len(y) // cfg.batch_size))
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(training.make_dataset(x, y, cfg, training=True, seed=0), epochs=2, verbose=0, callbacks=[Timer()])
    keras.mixed_precision.set_global_policy("float32")
    return times[-1], model


def onednn_kernels(variant: str) -> dict[str, list[str]]:
    """The oneDNN implementations one training step of ``variant`` runs, by primitive kind."""
    code = "import sys; sys.argv = ['x', '--one-step', sys.argv[1]]; from benchmarks.flops import main; main()"
    env = os.environ | {"ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code, variant], capture_output=True, text=True, env=env, check=True).stdout
    found: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():  # onednn_verbose,v1,primitive,exec,cpu,<kind>,<implementation>,<propagation>,...
        parts = line.split(",")
        if line.startswith("onednn_verbose,") and len(parts) > 7 and parts[2:4] == ["primitive", "exec"]:
            found[parts[5]][f"{parts[6]} ({parts[7]})"] += 1
    kinds = ("convolution", "matmul", "inner_product")
    return {k: [name for name, _ in found[k].most_common()] for k in kinds if k in found}


def _one_step(variant: str) -> None:
    from pipeline.adapters.files import load_split
    from pipeline.core import training
    from pipeline.core.config import load_params

    cfg = load_params().variant(variant)
    x, y = load_split("data/prepared/train.npz")
    n = cfg.batch_size * training.STEPS_PER_EXECUTION
    model = training.compile_model(cfg, 1)
    model.fit(training.make_dataset(x[:n], y[:n], cfg, training=True, seed=0), epochs=1, verbose=0)


def measure(variants: list[str]) -> dict:
    from benchmarks import report

    doc = {"date": report.stamp(), "machine": report.machine(), "peak_gflops": {}, "variants": []}
    for dtype in ("float32", "bfloat16"):
        doc["peak_gflops"][dtype] = round(peak_gflops(dtype), 1)
    for variant in variants:
        seconds, model = epoch_seconds(variant)
        flops = forward_flops(model)
        achieved = 3 * flops * EPOCH_IMAGES / seconds / 1e9
        from pipeline.core.config import load_params

        precision = load_params().variant(variant).precision
        peak = doc["peak_gflops"]["bfloat16" if precision == "mixed_bfloat16" else "float32"]
        doc["variants"].append(
            {
                "variant": variant,
                "precision": precision,
                "forward_mflops_per_image": round(flops / 1e6, 2),
                "epoch_seconds": round(seconds, 2),
                "achieved_gflops": round(achieved, 1),
                "fraction_of_peak": round(achieved / peak, 3),
                "onednn": onednn_kernels(variant),
            }
        )
        print(json.dumps(doc["variants"][-1]), flush=True)
    return doc


def markdown(doc: dict) -> str:
    mc = doc["machine"]
    lines = [
        "# Training FLOP/s against this machine's peak",
        "",
        f"`python -m benchmarks.flops`, {doc['date']}: {mc['cpu']} ({', '.join(mc['cpu_flags'])}), {mc['cores']} cores.",
        "",
        f"Peak, the best of 5 matrix multiplies of {SIZE} x {SIZE}: float32 {doc['peak_gflops']['float32']:.0f} GFLOP/s, "
        f"bfloat16 {doc['peak_gflops']['bfloat16']:.0f} GFLOP/s.",
        "",
        "| variant | precision | forward MFLOP per image | epoch (55,000 images) | achieved | of the peak in its precision |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for v in doc["variants"]:
        lines.append(
            f"| {v['variant']} | {v['precision']} | {v['forward_mflops_per_image']:.1f} | {v['epoch_seconds']:.1f} s "
            f"| {v['achieved_gflops']:.0f} GFLOP/s | {v['fraction_of_peak']:.0%} |"
        )
    lines += [
        "",
        "Achieved: 3 x the forward FLOPs of the convolutions and dense layers (forward and backward passes) per image,",
        "times 55,000, over one epoch (the second of two; augmentation, pooling, batch norm and the optimizer counted in",
        "the time but not in the FLOPs).",
        "",
        "oneDNN implementations of one training step (`ONEDNN_VERBOSE=1`), most used first:",
        "",
    ]
    for v in doc["variants"]:
        for kind, names in v["onednn"].items():
            lines.append(f"- {v['variant']}, {kind}: {', '.join(f'`{n}`' for n in names)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["baseline", "wide_aug"])
    parser.add_argument("--one-step", metavar="VARIANT", help=argparse.SUPPRESS)  # the ONEDNN_VERBOSE child
    args = parser.parse_args()
    if args.one_step:
        _one_step(args.one_step)
        return
    from pipeline.adapters.files import write_json

    doc = measure(args.variants)
    write_json(Path("reports/flops.json"), doc)
    Path("reports/flops.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
