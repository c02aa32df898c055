"""Stage ``prepare``: parse and validate the IDX files, split train/validation, save arrays.

Reads ``data/raw/*.gz``, ``base.seed``, ``prepare.*`` and any accepted new data in
``data/accepted/``. Writes ``data/prepared/{train,val,test}.npz`` (uint8 images ``x`` of
shape (N, 28, 28), uint8 labels ``y``), ``data/prepared/reserve.npz`` (the held-back pool,
possibly empty), ``reports/data.json`` and ``reports/figures/samples.png``.
"""

from __future__ import annotations

import logging

from pipeline.adapters.files import load_split, save_figure, save_split, write_json
from pipeline.adapters.mirrors import load_raw
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import run_entry
from pipeline.core import figures
from pipeline.core.config import load_params
from pipeline.core.splits import SPLITS, append, describe, split

log = logging.getLogger(__name__)


def main() -> None:
    params, paths = load_params(), Paths()
    splits = split(load_raw(paths.raw), params.prepare.val_size, params.prepare.reserve, params.base.seed)
    files = sorted(paths.accepted.glob("*.npz"))  # new data accepted by the intake
    batches = [load_split(f) for f in files]
    if batches:
        log.info("adding %d accepted images from %d file(s)", sum(len(y) for _, y in batches), len(batches))
    splits = append(splits, batches)
    for name in SPLITS:
        save_split(paths.split(name), *splits[name])
    accepted = {f.name: len(y) for f, (_, y) in zip(files, batches)}
    write_json(paths.data_report, describe(splits, params.base.class_names) | {"accepted_batches": accepted})
    save_figure(figures.plot_samples(*splits["train"], params.base.class_names), paths.samples_figure)
    log.info("train %d, val %d, test %d, reserve %d", *(len(splits[s][1]) for s in SPLITS))


if __name__ == "__main__":
    run_entry(main)
