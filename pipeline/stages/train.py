"""Stage ``train@<variant>``: fit one CNN variant, selecting on the validation split only.

Reads ``data/prepared/{train,val}.npz``, ``base.seed``, ``train`` and ``variants.<variant>``.
Writes ``models/<variant>/model.keras``, ``models/<variant>/history.csv`` (one row per epoch)
and ``models/<variant>/train.json``. A killed run resumes from its last completed epoch
(checkpoints in ``checkpoints/``); a diverging run (NaN or exploding loss) fails and writes nothing.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

import numpy as np

from pipeline.adapters.files import atomic_path, load_split, write_history, write_json
from pipeline.adapters.mlflow.variant import variant_run
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core.config import load_params, overrides, resolve_variant
from pipeline.core.splits import subset

log = logging.getLogger(__name__)


def main(variant: str, epochs: int | None = None, limit: int | None = None, track: bool = True) -> None:
    from pipeline.core import training  # imports TensorFlow: after run_entry has set its log level
    from pipeline.core.models import trainable_params

    params, paths = load_params(), Paths()
    cfg = resolve_variant(params, variant, epochs, limit)
    x, y = subset(*load_split(paths.split("train")), cfg.limit, params.base.seed)
    val = load_split(paths.split("val"))
    backup = paths.checkpoint(variant, training.config_hash(cfg, params.base.seed, paths.split("train").stat().st_size))
    with variant_run(params, paths, variant, cfg, backup, enabled=track) as run:
        start = time.perf_counter()
        model, history = training.fit((x, y), val, cfg, seed=params.base.seed, backup_dir=backup, callbacks=run.callbacks())
        seconds = time.perf_counter() - start
        best = int(np.argmax(history["val_accuracy"]))
        info = {
            "variant": variant,
            "architecture": cfg.architecture,
            "settings": overrides(cfg, params.train),  # what differs from the `train:` defaults
            "params": trainable_params(model),
            "epochs_trained": len(history["loss"]),
            "best_epoch": best + 1,
            "val_accuracy": history["val_accuracy"][best],
            "val_loss": history["val_loss"][best],
            "train_seconds": round(seconds, 1),
            "train_images": int(len(y)),
            "mlflow_run_id": run.run_id,
        }
        _save(paths, variant, model, history, info)
        run.log_training(info)
    shutil.rmtree(backup, ignore_errors=True)
    log.info("%s: val_accuracy %.4f after %d epochs in %.0f s", variant, info["val_accuracy"], info["epochs_trained"], seconds)


def _save(paths: Paths, variant: str, model, history: dict, info: dict) -> None:
    """Write model, history and info, each atomically; ``train.json`` last."""
    with atomic_path(paths.model_file(variant)) as tmp:
        model.save(tmp.with_suffix(".keras"))  # Keras insists on the suffix
        tmp.with_suffix(".keras").replace(tmp)
    write_history(paths.history(variant), history)
    write_json(paths.train_info(variant), info)


if __name__ == "__main__":
    run_entry(lambda: main(sys.argv[1]), tensorflow=True)
