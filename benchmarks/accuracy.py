"""Accuracy measures: the screening of training tricks, time to 92/93/94%, and the best variant over seeds.

Every run goes through ``pipeline.core.training.fit`` as the ``train`` stage calls it, and every
accuracy through ``pipeline.core.inference.predict_proba`` with the test-time augmentation (TTA)
named next to it, the function ``evaluate`` and the server use. Tricks are screened on the
validation split; the test split is read only for the time-to-accuracy bars and the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics

import numpy as np

from benchmarks.common import Data, Mode, TempStore, result, row
from pipeline.core.config import Augment, Params, Train

log = logging.getLogger(__name__)

# The tricks are screened on the settings of the default `wide_aug` with each of them off (OFF), shortened to
# SCREEN_EPOCHS epochs (one seed: one standard error on 5,000 validation images is ~0.33 points).
SCREEN_BASE = dict(architecture="wide_cnn", precision="mixed_bfloat16", batch_size=256, schedule="onecycle",
                   learning_rate=3e-3, dropout=0.15, augment=dict(shift=1, flip=True))  # fmt: skip
SCREEN_TTA = "flip+shift"
SCREEN_EPOCHS = 4
OFF = dict(ema=0.0, whiten=False, label_smoothing=0.0, bn_momentum=0.99, augment=dict(alternate_flips=False, erase=0.0))
TRICKS: dict[str, dict] = {
    "EMA of the weights, momentum 0.99 per step": dict(ema=0.99),
    "frozen patch-whitening stem (3x3, 18 filters)": dict(whiten=True),
    "label smoothing 0.1": dict(label_smoothing=0.1),
    "label smoothing 0.2": dict(label_smoothing=0.2),
    "alternating flips": dict(augment=dict(alternate_flips=True)),
    "random erasing, p 0.5": dict(augment=dict(erase=0.5)),
    "batch norm after the 14x14 and 7x7 convs (wide_bn_cnn)": dict(architecture="wide_bn_cnn"),
    "dense head of 256 units": dict(head=256),
    "Lookahead, alpha 0.5 every 16 steps": dict(lookahead=0.5),
    "Nesterov SGD, one-cycle peak 0.03": dict(optimizer="nesterov", learning_rate=0.03),
    "Nesterov SGD, one-cycle peak 0.1": dict(optimizer="nesterov", learning_rate=0.1),
}
# EMA where there is batch norm (faster BN momentum, statistics recomputed for the averaged weights),
# on the settings of the former `bn_dropout` variant: bn_cnn, dropout 0.1, shift 1 + flips, flip+shift TTA.
BN_BASE = dict(architecture="bn_cnn", precision="mixed_bfloat16", batch_size=256, schedule="onecycle",
               learning_rate=3e-3, dropout=0.1, augment=dict(shift=1, flip=True))  # fmt: skip
BN_TRICKS: dict[str, dict] = {
    "EMA 0.99, batch-norm momentum 0.9, statistics recomputed": dict(ema=0.99, bn_momentum=0.9),
}

# Time to accuracy: per bar, the candidate settings cheapest first (overrides of the `train:` defaults)
# and the TTA their accuracy is read with. The first candidate with every seed over the bar is timed.
TARGETS: dict[float, float] = {0.92: 25.0, 0.93: 60.0, 0.94: 180.0}  # bar: goal in seconds (mean fit wall time)
_FAST = dict(precision="mixed_bfloat16", batch_size=256, schedule="onecycle", learning_rate=3e-3)
CANDIDATES: dict[float, dict[str, tuple[dict, str] | None]] = {
    0.92: {  # used when params.yaml has no `fast` variant. Without the whitening stem slim_cnn needed 8 epochs (64.5 s)
        # lr 5e-3, 3 epochs: 92.49, 92.51, 92.11, 92.41, 92.25% test for seeds 42-46 in 22-24 s (trials, 2026-12-02);
        # lr 4e-3, 3 epochs: 91.99% on seed 44 (bench, 2026-12-02)
        "slim_cnn, whitening stem, label smoothing 0.1, lr 5e-3, 3 epochs": (
            dict(_FAST, architecture="slim_cnn", whiten=True, epochs=3, learning_rate=5e-3, label_smoothing=0.1), "none"),
        "slim_cnn, whitening stem, label smoothing 0.1, lr 4e-3, 4 epochs": (
            dict(_FAST, architecture="slim_cnn", whiten=True, epochs=4, learning_rate=4e-3, label_smoothing=0.1), "none"),
    },
    0.93: {  # 7 epochs: 93.57% test (flip TTA), 41 s, seed 42 (2026-12-02)
        "slim_cnn, whitening stem, flips, label smoothing 0.1, lr 4e-3, 6 epochs, flip TTA": (
            dict(_FAST, architecture="slim_cnn", whiten=True, epochs=6, learning_rate=4e-3, label_smoothing=0.1,
                 augment=dict(flip=True)), "flip"),
        "slim_cnn, whitening stem, flips, label smoothing 0.1, lr 4e-3, 7 epochs, flip TTA": (
            dict(_FAST, architecture="slim_cnn", whiten=True, epochs=7, learning_rate=4e-3, label_smoothing=0.1,
                 augment=dict(flip=True)), "flip"),
        # without the stem, 10 epochs: 93.16, 93.26, 93.24, 92.89% for seeds 42-45 in 148-162 s (2026-12-02)
        "wide_cnn, shift 1 + flips, dropout 0.15, EMA 0.99, 12 epochs, flip+shift TTA": (
            dict(_FAST, architecture="wide_cnn", epochs=12, dropout=0.15, ema=0.99, augment=dict(shift=1, flip=True)),
            "flip+shift"),
    },
    0.94: {  # wide_aug's settings in 11 of its 20 epochs, the most that fit in 180 s (about 15 s an epoch)
        "wide_cnn, whitening stem, shift 1 + flips, dropout 0.15, EMA 0.99, 11 epochs, flip+shift TTA": (
            dict(_FAST, architecture="wide_cnn", whiten=True, epochs=11, dropout=0.15, ema=0.99,
                 augment=dict(shift=1, flip=True)), "flip+shift"),
        "the best variant": None,
    },
}  # fmt: skip


def settings(base: Train, overrides: dict) -> Train:
    """``base`` with ``overrides`` (an ``augment`` mapping overrides key by key); patience = epochs (no early stop)."""
    over = dict(overrides)
    augment = Augment(**{**dataclasses.asdict(base.augment), **over.pop("augment", {})})
    cfg = dataclasses.replace(base, augment=augment, **over)
    return dataclasses.replace(cfg, patience=cfg.epochs, limit=0)


_DONE: dict[str, dict] = {}  # runs already made in this process, by settings, seed, TTA and split


def train_and_score(data: Data, cfg: Train, seed: int, tta: str, store: TempStore, split: str = "test") -> dict:
    """One seeded ``fit`` (tracked to the temporary store), timed, and scored on ``split`` with ``tta``.

    A run with the same settings, seed, TTA and split as one made before in this process is not
    made again (the time to 94% of the best variant's settings reuses the seeds of its 3-seed mean).
    """
    key = json.dumps([dataclasses.asdict(cfg), seed, tta, split, len(data.train[1])], sort_keys=True)
    if key not in _DONE:
        _DONE[key] = _train_and_score(data, cfg, seed, tta, store, split)
    return _DONE[key]


def _train_and_score(data: Data, cfg: Train, seed: int, tta: str, store: TempStore, split: str) -> dict:
    from benchmarks.training import run_pipeline
    from pipeline.core.inference import predict_proba

    model, timer, seconds = run_pipeline(data, cfg, seed, store)
    x, y = getattr(data, split)
    predicted = predict_proba(model, x, tta).argmax(axis=1)
    recall = {int(c): float(np.mean(predicted[y == c] == c)) for c in np.unique(y)}
    epochs = timer.after_warmup or timer.seconds
    return {
        "seed": seed,
        "fit_seconds": seconds,
        "epoch_seconds": statistics.median(epochs),
        "accuracy": float(np.mean(predicted == y)),
        "recall": recall,
        "params": int(model.count_params()),
    }


def screening(data: Data, params: Params, mode: Mode, store: TempStore) -> dict:
    """Each trick added alone to a shortened run of ``SCREEN_BASE``: validation accuracy gain and cost per epoch."""
    seed, epochs, tta = params.base.seed, 1 if mode.quick else SCREEN_EPOCHS, SCREEN_TTA
    table, rows = [], []
    bases = (
        ("wide_cnn", settings(settings(params.train, SCREEN_BASE), OFF | {"epochs": epochs}), TRICKS),
        ("bn_cnn", settings(settings(params.train, BN_BASE), OFF | {"epochs": epochs}), BN_TRICKS),
    )
    for variant, base, tricks in bases:
        runs = {"(none)": base} | {name: settings(base, over) for name, over in tricks.items()}
        if mode.quick:
            runs = dict(list(runs.items())[:2])
        first = None
        for name, cfg in runs.items():
            done = train_and_score(data, cfg, seed, tta, store, split="val")
            first = first or done
            gain = 100 * (done["accuracy"] - first["accuracy"])
            rows.append(row(f"{variant}: {name}, epoch", [done["epoch_seconds"]], val_accuracy=done["accuracy"]))
            table.append([variant, name, f"{done['accuracy']:.2%}", "-" if done is first else f"{gain:+.2f}",
                          f"{done['epoch_seconds']:.1f} s", "-" if done is first else
                          f"{done['epoch_seconds'] - first['epoch_seconds']:+.1f} s"])  # fmt: skip
            log.info("screening %s + %s: val %.4f, %.1f s/epoch", variant, name, done["accuracy"], done["epoch_seconds"])
    gains = [float(t[3]) for t in table if t[3] != "-"]
    title = f"Screening of training tricks: each alone, {epochs} epochs, validation accuracy with {tta} TTA"
    header = ["settings", "trick added", "val accuracy", "gain (points)", "epoch", "cost per epoch"]
    return result(
        "trick_screening", title, "each trick measured (gain in points, cost in s/epoch)", max(gains, default=None),
        bool(gains), rows, unit="pts", table={"header": header, "rows": table}, seed=seed,
    )  # fmt: skip


def time_to_accuracy(
    data: Data, params: Params, mode: Mode, store: TempStore, target: float, variant: str | None = None, best: str = ""
) -> dict:
    """``fit`` wall time of the first candidate whose every seed reaches ``target`` test accuracy, mean over seeds.

    When none does, the figure is the candidate that came closest (the highest accuracy of its lowest seed).

    The candidates are the one ``variant`` of ``params.yaml`` named (for 92%: ``fast`` when there is
    one and none is named), else this module's ``CANDIDATES``, where ``None`` stands for the
    ``best`` variant's settings in ``params.yaml``.
    """
    goal_s, seeds = TARGETS[target], 1 if mode.quick else 5
    rows, best_run, best_low = [], None, 0.0
    if target == 0.92 and not variant and "fast" in params.variants:
        variant = "fast"
    if variant:
        candidates = [(f"variant {variant} (params.yaml)", (params.variant(variant), params.evaluate.tta_of(variant)))]
    else:
        candidates = [
            (f"variant {best} (params.yaml)", (params.variant(best), params.evaluate.tta_of(best)))
            if spec is None
            else (name, (settings(params.train, spec[0]), spec[1]))
            for name, spec in CANDIDATES[target].items()
        ]
    for name, (cfg, tta) in candidates[:1] if mode.quick else candidates:
        cfg = dataclasses.replace(cfg, epochs=1) if mode.quick else cfg
        done = []
        for i in range(seeds):
            done.append(train_and_score(data, cfg, params.base.seed + i, tta, store))
            log.info("time to %.0f%%: %s, seed %d: %.1f s, %.4f", 100 * target, name, done[-1]["seed"],
                     done[-1]["fit_seconds"], done[-1]["accuracy"])  # fmt: skip
            if done[-1]["accuracy"] < target and not mode.quick:
                break  # this candidate cannot count; the next one may
        accs = [d["accuracy"] for d in done]
        reached = len(done) == seeds and min(accs) >= target
        rows.append(row(f"fit: {name}", [d["fit_seconds"] for d in done], test_accuracies=accs, reached=reached))
        mean = statistics.fmean(d["fit_seconds"] for d in done)
        if best_run is None or reached or min(accs) > best_low:  # else the closest: the highest lowest seed
            best_run, best_low = (name, mean, reached and mean <= goal_s, cfg, tta), min(accs)
        if reached:
            break
    name, mean, ok, cfg, tta = best_run
    key = f"time_to_{round(100 * target)}"
    title = f"Time to {target:.0%} test accuracy: fit wall time of the fastest settings, mean over {seeds} seed(s)"
    goal = f"<= {goal_s:.0f} s, every seed >= {target:.1%}"
    return result(key, title, goal, mean, ok, rows, unit="s", settings=name, config=dataclasses.asdict(cfg), tta=tta)


def best_over_seeds(data: Data, params: Params, mode: Mode, store: TempStore, best: str) -> dict:
    """The best variant's settings as in ``params.yaml``, trained with 3 seeds: test accuracy mean, spread, recall."""
    cfg, tta = params.variant(best), params.evaluate.tta_of(best)
    seeds = [params.base.seed + i for i in range(1 if mode.quick else 3)]
    if mode.quick:
        cfg = dataclasses.replace(cfg, epochs=1)
    done = [train_and_score(data, cfg, s, tta, store) for s in seeds]
    accs = [d["accuracy"] for d in done]
    mean = statistics.fmean(accs)
    names = params.base.class_names
    recall = {names[c]: statistics.fmean(d["recall"][c] for d in done) for c in range(len(names))}
    rows = [row(f"{best}: fit, seed {d['seed']}", [d["fit_seconds"]], test_accuracy=d["accuracy"]) for d in done]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    title = f"Best variant ({best}, TTA {tta}) over {len(seeds)} seed(s): mean test accuracy"
    return result(
        "best_over_seeds", title, ">= 94.5% mean test accuracy, under 1M params", mean,
        mean >= 0.945 and done[0]["params"] < 1_000_000, rows, unit="acc", settings=f"variants.{best} in params.yaml",
        accuracies=accs, stdev=spread, min=min(accs), max=max(accs), recall=recall, params=done[0]["params"], tta=tta,
    )  # fmt: skip
