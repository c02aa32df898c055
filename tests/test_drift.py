"""Drift figures: PSI of pixel intensities and the shift of predicted classes (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEBIAN_DATA, needs_real_data

from pipeline.core import drift

RNG = np.random.default_rng(0)


def _images(n: int, low: int = 0, high: int = 256) -> np.ndarray:
    return RNG.integers(low, high, (n, 28, 28), dtype=np.uint8)


def test_histogram_is_a_distribution_over_16_bins():
    h = drift.histogram(_images(10))
    assert h.shape == (drift.BINS,)
    assert h.sum() == pytest.approx(1.0)
    assert drift.histogram(np.zeros((3, 28, 28), np.uint8))[0] == 1.0


def test_psi_of_identical_data_is_zero_and_of_shifted_data_is_over_threshold():
    x = _images(200, 0, 256)
    same = drift.measure(x, x.copy(), psi_threshold=0.2, class_shift_threshold=0.1)
    assert same.pixel_psi == pytest.approx(0.0, abs=1e-12)
    assert not same.drifted and same.reasons == []
    brighter = drift.measure(
        x, np.clip(x.astype(int) + 80, 0, 255).astype(np.uint8), psi_threshold=0.2, class_shift_threshold=0.1
    )
    assert brighter.pixel_psi > 0.2
    assert brighter.drifted and "pixel-intensity PSI" in brighter.reasons[0]
    assert brighter.class_shift is None  # no predictions given: no class figures
    assert "drift.class_shift_tvd" not in brighter.metrics()


def test_two_samples_of_one_distribution_have_a_small_psi():
    assert drift.psi(drift.histogram(_images(300)), drift.histogram(_images(300))) < 0.01


def test_class_shift_is_the_total_variation_distance():
    balanced = np.arange(1000) % 10
    assert drift.total_variation(drift.class_distribution(balanced), drift.class_distribution(balanced)) == 0.0
    skewed = np.where(np.arange(1000) < 500, 3, balanced)  # half the predictions become "Dress"
    x = _images(20)
    report = drift.measure(x, x, psi_threshold=0.2, class_shift_threshold=0.1, pred_ref=balanced, pred_new=skewed)
    assert report.class_shift == pytest.approx(0.45)
    assert report.class_psi > 0.2
    assert report.reasons == ["predicted-class shift (TVD) 0.450 > 0.1"]
    assert report.metrics()["drift.class_shift_tvd"] == pytest.approx(0.45)
    assert report.to_dict()["drifted"] is True


def test_empty_bins_do_not_make_psi_infinite():
    assert np.isfinite(drift.psi([1.0, 0.0], [0.0, 1.0]))


@needs_real_data
def test_real_validation_images_do_not_drift_but_inverted_ones_do():
    from pipeline.adapters.mirrors import load_raw

    x = load_raw(DEBIAN_DATA)["train_x"]
    train, held_out = x[:50_000], x[50_000:]
    assert drift.measure(train, held_out, psi_threshold=0.2, class_shift_threshold=0.1).pixel_psi < 0.01
    assert drift.measure(train, 255 - held_out, psi_threshold=0.2, class_shift_threshold=0.1).pixel_psi > 1.0


def test_served_traffic_summed_from_per_image_histograms_gets_the_figures_of_its_images():
    """The monitor's figures (from the prediction log's per-image counts) are the intake's (from the images)."""
    rng = np.random.default_rng(3)
    x_ref, x_new = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), rng.integers(0, 120, (80, 28, 28), dtype=np.uint8)
    pred_ref, pred_new = rng.integers(0, 10, 300), rng.integers(0, 3, 80)
    direct = drift.measure(x_ref, x_new, psi_threshold=0.2, class_shift_threshold=0.1, pred_ref=pred_ref, pred_new=pred_new)
    counts = drift.histograms(x_new).sum(axis=0)
    summed = drift.compare(
        drift.histogram(x_ref), counts / counts.sum(), len(x_new), psi_threshold=0.2, class_shift_threshold=0.1,
        classes_ref=drift.class_distribution(pred_ref), classes_new=drift.class_distribution(pred_new),
    )  # fmt: skip
    assert summed == direct and summed.drifted
    low = drift.compare(summed.pixels_ref, summed.pixels_ref, 80, psi_threshold=0.2, class_shift_threshold=0.1,
                        confidence=(0.95, 0.80), confidence_drop_threshold=0.05)  # fmt: skip
    assert low.reasons == ["mean top probability 0.800 against 0.950 (a drop of 0.150 > 0.05)"]
    assert low.metrics()["drift.confidence_drop"] == pytest.approx(0.15)
