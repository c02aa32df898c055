"""Intake of new labelled data (good files, five kinds of broken files, duplicates) and simulate-new-data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from PIL import Image

from pipeline.adapters.files import load_split, save_split
from pipeline.adapters.paths import Paths
from pipeline.commands import simulate
from pipeline.core import images, incoming
from pipeline.core.errors import PipelineError
from pipeline.services import intake

CLASSES = tuple(yaml.safe_load((ROOT / "params.yaml").read_text())["base"]["class_names"])


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    """A project root with small random prepared splits (and a reserve) and an empty intake."""
    rng = np.random.default_rng(1)
    paths = Paths(tmp_path)
    for split, n in (("train", 40), ("val", 10), ("test", 10), ("reserve", 30)):
        save_split(paths.prepared / f"{split}.npz", _images(rng, n), rng.integers(0, 10, n, dtype=np.uint8))
    paths.accepted.mkdir(parents=True)
    paths.incoming.mkdir(parents=True)
    return paths


def _png(path: Path, image: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert(mode).save(path)
    return path


def test_class_folders_use_folder_safe_names_or_indices():
    assert images.folder_name("T-shirt/top") == "T-shirt_top"
    assert incoming.label_of("T-shirt_top", CLASSES) == 0
    assert incoming.label_of("Ankle boot", CLASSES) == 9
    assert incoming.label_of("3", CLASSES) == 3
    for bad in ("10", "Hat", "T-shirt"):
        with pytest.raises(incoming.Rejected, match="unknown class folder"):
            incoming.label_of(bad, CLASSES)


def test_good_files_are_accepted_as_one_batch(paths: Paths):
    rng = np.random.default_rng(2)
    new = _images(rng, 7)
    _png(paths.incoming / "T-shirt_top" / "a.png", new[0])
    _png(paths.incoming / "Coat" / "b.png", new[1])
    _png(paths.incoming / "9" / "c.png", new[2])
    _png(paths.incoming / "Bag" / "rgb.png", np.stack([new[3]] * 3, axis=-1), mode="RGB")  # converted to grayscale
    np.savez(paths.incoming / "more.npz", x=new[4:, ..., None].astype(np.int64), y=np.array([1, 2, 3]))
    (paths.incoming / ".gitkeep").touch()  # hidden files are ignored

    result = intake.run(paths, CLASSES, stamp="20250101T000000Z")

    assert result.rejected == {}
    assert result.accepted_files == 5 and result.accepted_images == 7
    assert result.batch == Path("data/accepted/batch-20250101T000000Z.npz")
    x, y = load_split(paths.root / result.batch)
    assert sorted(y.tolist()) == [0, 1, 2, 3, 4, 8, 9]
    for image in new:  # every image arrived, pixel for pixel
        assert any(np.array_equal(image, got) for got in x)
    assert intake.pending(paths.incoming) == []  # sources consumed
    assert (paths.incoming / ".gitkeep").exists()
    assert result.per_class == {"T-shirt/top": 1, "Trouser": 1, "Pullover": 1, "Dress": 1, "Coat": 1, "Bag": 1, "Ankle boot": 1}


def test_broken_files_are_quarantined_with_reasons(paths: Paths):
    rng = np.random.default_rng(3)
    good = _png(paths.incoming / "Dress" / "good.png", _images(rng, 1)[0])
    truncated = _png(paths.incoming / "Coat" / "truncated.png", _images(rng, 1)[0])
    truncated.write_bytes(good.read_bytes()[:40])
    (paths.incoming / "Coat" / "notes.png").write_text("not an image")
    _png(paths.incoming / "Bag" / "big.png", _images(rng, 1)[0].repeat(2, axis=0))  # 28x56
    _png(paths.incoming / "Hat" / "hat.png", _images(rng, 1)[0])
    np.savez(paths.incoming / "labels.npz", x=_images(rng, 3), y=np.array([1, 12, 2]))
    np.savez(paths.incoming / "no-y.npz", x=_images(rng, 2))
    _png(paths.incoming / "loose.png", _images(rng, 1)[0])
    (paths.incoming / "Shirt").mkdir()
    Image.fromarray(np.full((28, 28), 1000, np.int32)).save(paths.incoming / "Shirt" / "deep.png")  # 32-bit pixels

    result = intake.run(paths, CLASSES, stamp="s1")

    expected = {
        "Coat/truncated.png": "not a decodable image",
        "Coat/notes.png": "not a decodable image",
        "Bag/big.png": "image is 28x56; expected 28x28",
        "Hat/hat.png": "unknown class folder 'Hat': label out of range",
        "labels.npz": "label 12 out of range 0-9 in row 1",
        "no-y.npz": "missing array 'y'",
        "loose.png": "outside a class folder has no label",
        "Shirt/deep.png": "pixel mode I",
    }
    assert set(result.rejected) == set(expected)
    for rel, reason in expected.items():
        assert reason in result.rejected[rel], (rel, result.rejected[rel])
        moved = paths.quarantine / "s1" / rel
        assert moved.exists() and not (paths.incoming / rel).exists()
        assert reason in moved.with_name(moved.name + ".reason.txt").read_text()
    assert result.accepted_images == 1  # the good file still goes in
    assert load_split(paths.root / result.batch)[1].tolist() == [3]


def test_duplicates_of_existing_or_incoming_data_are_quarantined(paths: Paths):
    train_x = load_split(paths.prepared / "train.npz")[0]
    test_x = load_split(paths.prepared / "test.npz")[0]
    earlier = np.random.default_rng(4).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    save_split(paths.accepted / "batch-earlier.npz", earlier, np.array([5], np.uint8))
    fresh = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    _png(paths.incoming / "Sandal" / "train-copy.png", train_x[7])
    _png(paths.incoming / "Sandal" / "test-copy.png", test_x[2])
    _png(paths.incoming / "Sandal" / "earlier-copy.png", earlier[0])
    _png(paths.incoming / "Sneaker" / "a.png", fresh)
    _png(paths.incoming / "Sneaker" / "b.png", fresh)  # the same new image twice: the second is a duplicate
    np.savez(paths.incoming / "rows.npz", x=np.stack([fresh + 1, train_x[0]]), y=np.array([1, 1]))

    result = intake.run(paths, CLASSES, stamp="s2")

    assert "already in the training split" in result.rejected["Sandal/train-copy.png"]
    assert "already in the test split" in result.rejected["Sandal/test-copy.png"]
    assert "already in accepted batch-earlier.npz" in result.rejected["Sandal/earlier-copy.png"]
    assert "already in incoming Sneaker/a.png" in result.rejected["Sneaker/b.png"]
    assert result.rejected["rows.npz"].startswith("row 1 duplicates an image already in the training split")
    assert result.accepted_files == 1 and result.per_class == {"Sneaker": 1}


def test_nothing_pending_writes_nothing(paths: Paths):
    result = intake.run(paths, CLASSES)
    assert result.batch is None and result.rejected == {} and result.accepted_images == 0
    assert list(paths.accepted.iterdir()) == [] and not paths.quarantine.exists()


def test_intake_needs_prepared_splits_to_find_duplicates(tmp_path: Path):
    paths = Paths(tmp_path)
    _png(paths.incoming / "Coat" / "a.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(PipelineError, match="dvc repro prepare"):
        intake.run(paths, CLASSES)
    assert (paths.incoming / "Coat" / "a.png").exists()  # untouched


def test_simulate_hands_out_unused_reserve_images_that_the_intake_accepts(paths: Paths):
    reserve_x, reserve_y = load_split(paths.prepared / "reserve.npz")
    counts = simulate.simulate(paths, 12, CLASSES, seed=0)
    assert sum(counts.values()) == 12
    files = intake.pending(paths.incoming)
    assert len(files) == 12 and all(f.suffix == ".png" and f.parent.parent == paths.incoming for f in files)
    assert len(json.loads(paths.simulated.read_text())["used"]) == 12

    result = intake.run(paths, CLASSES, stamp="s3")
    assert result.rejected == {} and result.accepted_images == 12
    x, y = load_split(paths.root / result.batch)
    index = {h: i for i, h in enumerate(images.image_hashes(reserve_x))}
    assert [reserve_y[index[h]] for h in images.image_hashes(x)] == y.tolist()  # labels survive the round trip

    simulate.simulate(paths, 18, CLASSES, seed=0)  # the rest of the reserve, none handed out twice
    assert intake.run(paths, CLASSES, stamp="s4").accepted_images == 18
    with pytest.raises(PipelineError, match="only 0 unused reserve images"):
        simulate.simulate(paths, 1, CLASSES, seed=0)


def test_simulate_explains_an_empty_reserve(paths: Paths):
    save_split(paths.prepared / "reserve.npz", np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
    with pytest.raises(PipelineError, match="prepare.reserve"):
        simulate.simulate(paths, 5, CLASSES, seed=0)
