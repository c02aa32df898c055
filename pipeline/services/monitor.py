"""``fmnist monitor``'s check: the last window of served predictions against the champion's training reference.

Live traffic is what ``fmnist serve`` logged (:mod:`pipeline.adapters.prediction_log`, in the stack's
database or in ``data/predictions/``): per image its
pixel-intensity histogram, predicted class and top probability, whichever version answered. It is
compared with :func:`pipeline.services.drift_check.reference` (the training split's pixels, the
champion's answers on a sample of it) by :func:`pipeline.core.drift.compare`, with the intake's
thresholds (``retrain.psi_threshold``, ``retrain.class_shift_threshold``) and
``monitor.confidence_drop_threshold``: the same code and figures as the intake's drift check.

The sampled images of the window (``serve.sample_rate``) whose top probability is below
``monitor.low_confidence``, or all of them when the window drifted, are exported for a person to
label, lowest confidence first, in the intake's layout: ``data/to-label/<window>/<predicted class>/<n>.png``.
Moving a corrected class folder into ``data/incoming/`` is what the retraining flow takes in.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from pipeline.adapters import prediction_log
from pipeline.adapters.paths import Paths
from pipeline.core import drift
from pipeline.core.config import Params
from pipeline.core.errors import RegistryError
from pipeline.core.images import folder_name
from pipeline.services.drift_check import reference


@dataclass
class Window:
    """One window checked: when, how much traffic, by which versions, its drift figures and the images exported."""

    start: datetime
    end: datetime
    images: int
    versions: dict[str, int] = field(default_factory=dict)
    champion: str | None = None
    report: drift.DriftReport | None = None  # None: too few images to judge
    exported: Path | None = None
    n_exported: int = 0
    min_images: int = 0  # the setting it was judged with

    @property
    def drifted(self) -> bool:
        return self.report is not None and self.report.drifted

    @property
    def message(self) -> str:
        span = f"{self.images} images served {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"
        if self.report is None:
            return f"{span}: too few to judge (monitor.min_images is {self.min_images}); no drift measured"
        verdict = "drift: " + "; ".join(self.report.reasons) if self.drifted else "no drift"
        out = f"{span} (versions {', '.join(f'{v} ({n})' for v, n in sorted(self.versions.items()))}): {verdict}"
        return out + (f"; {self.n_exported} images to label in {self.exported}" if self.n_exported else "")

    def summary(self) -> dict:
        return {
            "start": self.start.isoformat(timespec="seconds"),
            "end": self.end.isoformat(timespec="seconds"),
            "images": self.images,
            "versions": self.versions,
            "champion": self.champion,
            "drifted": self.drifted,
            "report": None if self.report is None else self.report.to_dict(),
            "exported": None if self.exported is None else str(self.exported),
            "n_exported": self.n_exported,
            "message": self.message,
        }


def check(paths: Paths, params: Params, now: datetime | None = None) -> Window:
    """Check the last ``monitor.window_h`` hours of the prediction log, up to ``now``.

    Raises:
        RegistryError: there is no champion to compare the traffic's answers with.
    """
    cfg = params.monitor
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=cfg.window_h)
    store = prediction_log.open_store(prediction_log.where(paths))  # the stack's database, or data/predictions/
    try:
        return _check(paths, params, store, start, end)
    finally:
        store.close()


def _check(paths: Paths, params: Params, store, start: datetime, end: datetime) -> Window:
    cfg = params.monitor
    records = store.records(start, end)
    versions = dict(Counter(r["version"] for r in records))
    window = Window(start, end, len(records), versions, min_images=cfg.min_images)
    if len(records) < cfg.min_images:
        return window
    ref = reference(paths, params)
    if ref.model is None:
        raise RegistryError(f"{params.registry.model_name} has no champion: nothing to compare the served answers with")
    pixels = np.sum([r["pixel_histogram"] for r in records], axis=0, dtype=np.float64)
    classes = drift.class_distribution(np.array([r["class_index"] for r in records]))
    top = float(np.mean([r["top_probability"] for r in records]))
    window.champion = ref.champion
    window.report = drift.compare(
        ref.pixels, pixels / pixels.sum(), len(records),
        psi_threshold=params.retrain.psi_threshold, class_shift_threshold=params.retrain.class_shift_threshold,
        classes_ref=ref.classes, classes_new=classes, confidence=(ref.confidence, top),
        confidence_drop_threshold=cfg.confidence_drop_threshold,
    )  # fmt: skip
    window.exported, window.n_exported = export(paths, params, window, store)
    return window


def export(paths: Paths, params: Params, window: Window, store) -> tuple[Path | None, int]:
    """Write the window's sampled images to label (low-confidence ones; all when it drifted) as PNGs in class folders.

    Written to a temporary folder beside the destination and renamed into place: a failed export leaves nothing behind.
    """
    from PIL import Image

    cfg = params.monitor
    images, records = store.sampled(window.start, window.end)
    keep = [i for i, r in enumerate(records) if window.drifted or r["top_probability"] < cfg.low_confidence]
    keep = sorted(keep, key=lambda i: records[i]["top_probability"])[: cfg.export_max]
    if not keep:
        return None, 0
    dest = paths.to_label / f"{window.end:%Y%m%dT%H%M%SZ}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent))
    try:
        for n, i in enumerate(keep):
            record = records[i]
            folder = tmp / folder_name(params.base.class_names[record["class_index"]])
            folder.mkdir(exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{n:04d}-p{record['top_probability']:.2f}.png")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, len(keep)
