"""Drift of new data against the training data: pure numpy, no files, no models; and its figure.

Two figures, each with a threshold in ``params.yaml`` (``retrain.*``):

- the population stability index (PSI) of pixel intensities, new vs training images
  (16 equal-width bins over 0-255; PSI = sum over bins of (new - ref) * ln(new / ref));
- the shift of the champion's predicted-class distribution, new vs training images, as the
  total variation distance (TVD = half the L1 distance; 0 = same, 1 = disjoint), with its
  PSI over the ten classes reported beside it;
- for served traffic (``fmnist monitor``), also the drop of the champion's mean top probability
  against the reference's (``monitor.confidence_drop_threshold``).

A labelled batch (the intake) is measured from its images with :func:`measure`; served traffic,
whose prediction log keeps each image's intensity histogram and answer, from those with
:func:`compare`, the same figures.

Rules of thumb for PSI: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 major.
:func:`plot_drift` draws both, training vs new data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.core.figures import pyplot

BINS = 16  # equal-width intensity bins of 16 grey levels each
_EPS = 1e-4  # floor for empty bins, so that ln(new / ref) stays finite


def histogram(x: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Share of pixels per intensity bin: (bins,) float64 summing to 1, for uint8 images of any shape."""
    counts = np.bincount(np.asarray(x, np.uint8).ravel(), minlength=256)
    return counts.reshape(bins, 256 // bins).sum(axis=1) / max(counts.sum(), 1)


def class_distribution(pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Share of each predicted class: (n_classes,) float64 summing to 1."""
    counts = np.bincount(np.asarray(pred, np.int64), minlength=n_classes)[:n_classes]
    return counts / max(counts.sum(), 1)


def psi(ref: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (0 when identical)."""
    ref = np.clip(np.asarray(ref, np.float64), _EPS, None)
    new = np.clip(np.asarray(new, np.float64), _EPS, None)
    ref, new = ref / ref.sum(), new / new.sum()
    return float(np.sum((new - ref) * np.log(new / ref)))


def total_variation(ref: np.ndarray, new: np.ndarray) -> float:
    """Half the L1 distance of two distributions: the largest difference in probability of any event."""
    return float(0.5 * np.abs(np.asarray(ref, np.float64) - np.asarray(new, np.float64)).sum())


@dataclass(frozen=True)
class DriftReport:
    """The drift figures of one batch of new data; the class figures are None without a champion."""

    n_new: int
    pixel_psi: float
    psi_threshold: float
    class_shift: float | None
    class_psi: float | None
    class_shift_threshold: float
    pixels_ref: tuple[float, ...]
    pixels_new: tuple[float, ...]
    classes_ref: tuple[float, ...] | None = None
    classes_new: tuple[float, ...] | None = None
    confidence_ref: float | None = None  # mean top probability of the champion, reference and new images
    confidence_new: float | None = None
    confidence_drop_threshold: float | None = None

    @property
    def reasons(self) -> list[str]:
        """Which figures are over their thresholds, in words (empty: no drift)."""
        out = []
        if self.pixel_psi > self.psi_threshold:
            out.append(f"pixel-intensity PSI {self.pixel_psi:.3f} > {self.psi_threshold}")
        if self.class_shift is not None and self.class_shift > self.class_shift_threshold:
            out.append(f"predicted-class shift (TVD) {self.class_shift:.3f} > {self.class_shift_threshold}")
        if self.confidence_drop is not None and self.confidence_drop > self.confidence_drop_threshold:
            out.append(
                f"mean top probability {self.confidence_new:.3f} against {self.confidence_ref:.3f} "
                f"(a drop of {self.confidence_drop:.3f} > {self.confidence_drop_threshold})"
            )
        return out

    @property
    def confidence_drop(self) -> float | None:
        if self.confidence_ref is None or self.confidence_new is None or self.confidence_drop_threshold is None:
            return None
        return self.confidence_ref - self.confidence_new

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def metrics(self) -> dict[str, float]:
        """The scalar figures, for MLflow."""
        out = {"drift.n_new": float(self.n_new), "drift.pixel_psi": self.pixel_psi, "drift.drifted": float(self.drifted)}
        if self.class_shift is not None:
            out |= {"drift.class_shift_tvd": self.class_shift, "drift.class_psi": float(self.class_psi)}
        if self.confidence_drop is not None:
            out |= {"drift.confidence_new": self.confidence_new, "drift.confidence_drop": self.confidence_drop}
        return out

    def to_dict(self) -> dict:
        return asdict(self) | {"drifted": self.drifted, "reasons": self.reasons, "confidence_drop": self.confidence_drop}


def measure(
    x_ref: np.ndarray,
    x_new: np.ndarray,
    *,
    psi_threshold: float,
    class_shift_threshold: float,
    pred_ref: np.ndarray | None = None,
    pred_new: np.ndarray | None = None,
) -> DriftReport:
    """Drift of ``x_new`` against ``x_ref`` (uint8 images), and of the champion's predictions if given."""
    c_ref = c_new = None
    if pred_ref is not None and pred_new is not None:
        c_ref, c_new = class_distribution(pred_ref), class_distribution(pred_new)
    return compare(
        histogram(x_ref), histogram(x_new), int(len(x_new)),
        psi_threshold=psi_threshold, class_shift_threshold=class_shift_threshold, classes_ref=c_ref, classes_new=c_new,
    )  # fmt: skip


def compare(
    pixels_ref: np.ndarray,
    pixels_new: np.ndarray,
    n_new: int,
    *,
    psi_threshold: float,
    class_shift_threshold: float,
    classes_ref: np.ndarray | None = None,
    classes_new: np.ndarray | None = None,
    confidence: tuple[float, float] | None = None,
    confidence_drop_threshold: float | None = None,
) -> DriftReport:
    """The drift figures of distributions already counted: pixel-intensity shares (:data:`BINS` bins), predicted-class
    shares and the mean top probability (reference, new), each pair optional but the pixels."""
    shift = class_psi = None
    if classes_ref is not None and classes_new is not None:
        shift, class_psi = total_variation(classes_ref, classes_new), psi(classes_ref, classes_new)
    return DriftReport(
        n_new=int(n_new),
        pixel_psi=psi(pixels_ref, pixels_new),
        psi_threshold=psi_threshold,
        class_shift=shift,
        class_psi=class_psi,
        class_shift_threshold=class_shift_threshold,
        pixels_ref=tuple(map(float, pixels_ref)),
        pixels_new=tuple(map(float, pixels_new)),
        classes_ref=None if classes_ref is None else tuple(map(float, classes_ref)),
        classes_new=None if classes_new is None else tuple(map(float, classes_new)),
        confidence_ref=None if confidence is None else float(confidence[0]),
        confidence_new=None if confidence is None else float(confidence[1]),
        confidence_drop_threshold=confidence_drop_threshold if confidence is not None else None,
    )


def histograms(x: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each image's pixel count per intensity bin: (N, bins) int64 for uint8 images (N, ...); their sum over images,
    normalised, is :func:`histogram` of the batch."""
    x = np.asarray(x, np.uint8).reshape(len(x), -1)
    index = (np.arange(len(x))[:, None] * bins + x // (256 // bins)).ravel()
    return np.bincount(index, minlength=len(x) * bins).reshape(len(x), bins)


def plot_drift(report: DriftReport, class_names: tuple[str, ...]):
    """Pixel-intensity histograms and predicted-class shares, training vs new data, side by side."""
    plt = pyplot()
    fig, (pix, cls) = plt.subplots(1, 2, figsize=(12, 4))
    edges = np.arange(BINS) * (256 // BINS)
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
