"""One training trial of a variant with overrides, scored on validation and test under each TTA mode.

``python -m benchmarks.trial wide_aug epochs=30 ema=0.99 augment.erase=0.5 [seed=43]``

Trains on the prepared splits in ``data/prepared/`` through ``pipeline.core.training.fit`` (no
MLflow, no checkpoints), with early stopping off (patience = epochs), then prints one JSON line:
the settings, the fit's wall time, the validation history, and the validation and test accuracy
with each TTA mode the model allows (flips only for a model trained with them). For trying
settings before they go into ``params.yaml``; the quoted figures come from the pipeline and the bench.
"""

from __future__ import annotations

import ast
import json
import sys
import time

import numpy as np

from benchmarks.accuracy import settings
from pipeline.adapters.files import load_split
from pipeline.adapters.paths import Paths
from pipeline.core.config import TTA_MODES, load_params


def overrides(args: list[str]) -> tuple[dict, int]:
    """``key=value`` pairs (``augment.<key>`` for augmentation) as ``settings`` overrides, and the seed."""
    over: dict = {"augment": {}}
    seed = load_params().base.seed
    for arg in args:
        key, _, text = arg.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: architecture, schedule, precision
        if key == "seed":
            seed = int(value)
        elif key.startswith("augment."):
            over["augment"][key.removeprefix("augment.")] = value
        else:
            over[key] = value
    return over, seed


def main(argv: list[str]) -> dict:
    from pipeline.core.inference import predict_proba
    from pipeline.core.training import fit

    if not argv or "=" in argv[0]:
        sys.exit(__doc__.split("\n\n")[1])
    params, paths = load_params(), Paths()
    over, seed = overrides(argv[1:])
    cfg = settings(params.variant(argv[0]), over)
    train, val, test = (load_split(paths.split(s)) for s in ("train", "val", "test"))
    start = time.perf_counter()
    model, history = fit(train, val, cfg, seed=seed)
    out = {"variant": argv[0], "overrides": argv[1:], "seed": seed, "fit_seconds": round(time.perf_counter() - start, 1)}
    out |= {"params": int(model.count_params()), "val_history": [round(v, 4) for v in history["val_accuracy"]]}
    for tta in TTA_MODES if cfg.augment.flip else ("none",):
        for split, (x, y) in (("val", val), ("test", test)):
            out[f"{split}_accuracy_{tta}"] = round(float(np.mean(predict_proba(model, x, tta).argmax(axis=1) == y)), 4)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
