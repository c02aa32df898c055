"""Test-time augmentation screened on validation: ``python -m benchmarks.tta``.

For every variant's trained model in ``models/`` (after ``dvc repro``), the validation accuracy
and the time to score the 5,000 validation images with each mode of ``evaluate.tta``, computed by
the forward pass that ``evaluate`` and the server use. The test set is not read: the mode is
chosen on validation. Writes ``reports/tta.json`` and ``reports/tta.md``.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.adapters.files import load_split, write_json
from pipeline.adapters.paths import Paths
from pipeline.core.config import TTA_MODES, load_params


def screen(variants: list[str], paths: Paths) -> list[dict]:
    """One row per variant: validation accuracy and seconds per mode."""
    import keras

    from pipeline.core.inference import forward

    x, y = load_split(paths.split("val"))
    images = x[..., None].astype(np.float32) / 255.0
    rows = []
    for variant in variants:
        model = keras.saving.load_model(paths.model_file(variant), compile=False, safe_mode=True)
        row = {"variant": variant}
        for mode in TTA_MODES:
            run = forward(model, mode)
            start = time.perf_counter()
            proba = run(images)
            row[mode] = {"val_accuracy": float(np.mean(proba.argmax(axis=1) == y)), "seconds": time.perf_counter() - start}
        rows.append(row)
        print(row, flush=True)
    return rows


def markdown(rows: list[dict], chosen: dict[str, str]) -> str:
    lines = [
        "# Test-time augmentation on validation",
        "",
        "`python -m benchmarks.tta`: validation accuracy (5,000 images) of each variant's trained model with each",
        "mode of `evaluate.tta`, and the seconds to score them, by the forward pass that `evaluate` and the server use.",
        "",
        "| variant | trained with flips | " + " | ".join(TTA_MODES) + " | chosen (params.yaml) |",
        "|---|---|" + "---:|" * len(TTA_MODES) + "---|",
    ]
    params = load_params()
    for r in rows:
        cells = " | ".join(f"{r[m]['val_accuracy']:.2%} ({r[m]['seconds']:.2f} s)" for m in TTA_MODES)
        flips = "yes" if params.variant(r["variant"]).augment.flip else "no"
        lines.append(f"| {r['variant']} | {flips} | {cells} | {chosen.get(r['variant'], 'none')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    paths, params = Paths(), load_params()
    rows = screen(list(params.variants), paths)
    write_json(paths.reports / "tta.json", {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows})
    text = markdown(rows, params.evaluate.tta)
    (paths.reports / "tta.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
