"""Stage ``prepare``: the stratified, seeded train/validation/reserve split, and ``dvc repro prepare`` on the real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import dvc, needs_real_data

from pipeline.adapters.files import load_split, save_split
from pipeline.core.errors import ConfigError
from pipeline.core.splits import append, describe, split, stratified_take

CLASS_NAMES = tuple(f"class{i}" for i in range(10))


def synthetic_raw(per_class: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Balanced labels in shuffled order; each image's first two pixels encode its original index."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    test_x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    return {"train_x": x, "train_y": y, "test_x": test_x, "test_y": rng.integers(0, 10, 50, dtype=np.uint8)}


def ids(x: np.ndarray) -> set[int]:
    return set((x[:, 0, 0].astype(int) * 256 + x[:, 0, 1]).tolist())


def test_split_is_stratified_disjoint_and_complete():
    raw = synthetic_raw()
    splits = split(raw, val_size=200, reserve=0, seed=42)
    val_x, val_y = splits["val"]
    assert np.bincount(val_y, minlength=10).tolist() == [20] * 10
    train_ids, val_ids = ids(splits["train"][0]), ids(val_x)
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(1000))
    assert len(splits["reserve"][1]) == 0
    # images travel with their labels
    for x, y in (splits["train"], splits["val"]):
        original = np.array(sorted(ids(x)))
        np.testing.assert_array_equal(y, raw["train_y"][original])


def test_uneven_validation_size_is_balanced_within_one():
    counts = np.bincount(split(synthetic_raw(), val_size=205, reserve=0, seed=1)["val"][1], minlength=10)
    assert counts.sum() == 205 and counts.max() - counts.min() <= 1


def test_split_is_seeded():
    raw = synthetic_raw()
    first, again, other = (split(raw, 100, 0, seed) for seed in (7, 7, 8))
    assert ids(first["val"][0]) == ids(again["val"][0])
    np.testing.assert_array_equal(first["train"][0], again["train"][0])
    assert ids(first["val"][0]) != ids(other["val"][0])


def test_reserve_is_stratified_and_disjoint():
    splits = split(synthetic_raw(), val_size=100, reserve=300, seed=3)
    sets = {name: ids(splits[name][0]) for name in ("train", "val", "reserve")}
    assert np.bincount(splits["reserve"][1], minlength=10).tolist() == [30] * 10
    assert len(sets["train"]) == 600
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["reserve"] or sets["val"] & sets["reserve"])
    assert set.union(*sets.values()) == set(range(1000))


def test_test_set_is_untouched():
    raw = synthetic_raw()
    splits = split(raw, 100, 100, seed=0)
    np.testing.assert_array_equal(splits["test"][0], raw["test_x"])
    np.testing.assert_array_equal(splits["test"][1], raw["test_y"])


def test_impossible_sizes_are_config_errors():
    raw = synthetic_raw(per_class=10)
    with pytest.raises(ConfigError, match=r"prepare.val_size \+ prepare.reserve: expected less than 100, got 100"):
        split(raw, 60, 40, seed=0)
    with pytest.raises(ConfigError, match="class 3 has only 2"):
        stratified_take(np.array([3, 3] + [1] * 50), 10, np.random.default_rng(0))


def test_describe_counts_and_pixel_statistics():
    splits = split(synthetic_raw(), 100, 0, seed=0)
    summary = describe(splits, CLASS_NAMES)
    assert summary["counts"]["val"] == {name: 10 for name in CLASS_NAMES} | {"total": 100}
    assert summary["counts"]["train"]["total"] == 900
    x = splits["train"][0]
    assert summary["pixel_mean"] == pytest.approx(x.mean() / 255, abs=1e-6)


def test_append_adds_accepted_batches_to_train_only(tmp_path):
    splits = split(synthetic_raw(), 100, 0, seed=0)
    extra_x = np.full((5, 28, 28), 7, np.uint8)
    save_split(tmp_path / "batch-1.npz", extra_x, np.arange(5, dtype=np.uint8))  # as the intake writes it
    merged = append(splits, [load_split(tmp_path / "batch-1.npz")])
    assert len(merged["train"][1]) == 905
    np.testing.assert_array_equal(merged["train"][0][-5:], extra_x)
    np.testing.assert_array_equal(merged["train"][1][-5:], np.arange(5))
    assert merged["val"] is splits["val"]
    assert append(splits, []) is splits


@needs_real_data
@pytest.mark.slow
def test_dvc_repro_prepare_on_the_real_data(prepared_project):
    """The session's ``dvc repro prepare`` (in ``prepared_cache``), checked out into a fresh copy."""
    prepared = prepared_project / "data" / "prepared"
    sizes = {name: load_split(prepared / f"{name}.npz") for name in ("train", "val", "test")}
    assert {name: len(y) for name, (_, y) in sizes.items()} == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert np.bincount(sizes["val"][1]).tolist() == [500] * 10
    assert np.bincount(sizes["test"][1]).tolist() == [1_000] * 10
    assert sizes["train"][0].shape == (55_000, 28, 28) and sizes["train"][0].dtype == np.uint8
    report = json.loads((prepared_project / "reports" / "data.json").read_text())
    assert report["counts"]["val"]["T-shirt/top"] == 500 and report["counts"]["test"]["total"] == 10_000
    assert 0.2 < report["pixel_mean"] < 0.4
    assert (prepared_project / "reports" / "figures" / "samples.png").stat().st_size > 10_000

    again = dvc(prepared_project, "repro", "prepare")
    assert "Running stage" not in again.stdout
    assert "Stage 'download' didn't change" in again.stdout
    assert "Stage 'prepare' didn't change" in again.stdout
