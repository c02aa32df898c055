"""``fmnist predict``: image files and ``.npz`` batches through the champion, and clear errors for bad input.

Reads the session's shared tiny repro (``tests/tiny_repro.py``); inputs are real test images.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tiny_repro
from conftest import ROOT, tiny_params, write_params
from PIL import Image

from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.cli import main as fmnist
from pipeline.commands.predict import read_inputs
from pipeline.core.config import load_params
from pipeline.core.errors import InputError
from pipeline.core.images import MAX_FILE_BYTES, MAX_FILE_PIXELS

NAMES = list(load_params(ROOT / "params.yaml").base.class_names)


@pytest.fixture(scope="module")
def repro(prepared_cache, tmp_path_factory) -> Path:
    return tiny_repro.reproduced(prepared_cache, tmp_path_factory)


@pytest.fixture(scope="module")
def images(repro, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Real test images as files: two 28x28 grayscale PNGs, a 112x112 RGB PNG, a uint8 and a float ``.npz``."""
    x, _ = load_split(repro / "data" / "prepared" / "test.npz")
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(x[0]).save(folder / "first.png")
    Image.fromarray(x[1]).save(folder / "second.png")
    Image.fromarray(x[2]).resize((112, 112), Image.Resampling.NEAREST).convert("RGB").save(folder / "photo.png")
    np.savez(folder / "batch.npz", x=x[3:7])
    np.savez(folder / "floats.npz", x=(x[7:9] / 255.0).astype(np.float32)[..., None])
    return folder, x


@pytest.fixture(scope="module")
def champion(repro):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tiny_repro.store_uri(repro))
        yield registry.load_version("fashion-mnist-cnn", "1")


def _fmnist(repo: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(cmd, cwd=repo, env=tiny_repro.project_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def in_repro(repro, monkeypatch) -> Path:
    """Run ``fmnist`` in-process in the repro, on its own store (as from a shell in the project)."""
    monkeypatch.chdir(repro)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return repro


@pytest.mark.slow
def test_predict_json_on_png_rgb_and_npz_files(in_repro, images, champion, capsys):
    folder, x = images
    files = ["first.png", "photo.png", "batch.npz", "floats.npz"]
    fmnist(["predict", *(str(folder / f) for f in files), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "fashion-mnist-cnn" and out["version"] == "1"
    rows = out["predictions"]
    assert [r["input"] for r in rows] == [
        str(folder / "first.png"),
        str(folder / "photo.png"),
        *(f"{folder / 'batch.npz'}[{i}]" for i in range(4)),
        *(f"{folder / 'floats.npz'}[{i}]" for i in range(2)),
    ]
    for r in rows:
        assert r["class_name"] == NAMES[r["class_index"]]
        assert len(r["probabilities"]) == 10 and sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert r["probability"] == max(r["probabilities"])
    assert rows[1]["note"] == "converted RGB to grayscale; resized 112x112 to 28x28"
    assert all("note" not in r for i, r in enumerate(rows) if i != 1)
    # Lossless files give exactly what the model says about the arrays themselves.
    expected = champion.predict(x[[0, 3, 4, 5, 6, 7, 8]])["class_index"].tolist()
    assert [rows[i]["class_index"] for i in (0, 2, 3, 4, 5, 6, 7)] == expected


@pytest.mark.slow
def test_predict_prints_class_probability_and_conversion_notes(in_repro, images, capsys):
    folder, _ = images
    fmnist(["predict", str(folder / "second.png"), str(folder / "photo.png")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    first, photo = lines
    assert first.startswith(f"{folder / 'second.png'}: ") and first.endswith("%)")
    assert first.split(": ", 1)[1].rsplit(" (", 1)[0] in NAMES
    assert photo.endswith("(converted RGB to grayscale; resized 112x112 to 28x28)")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (what a decompression bomb looks like)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # size, then depth/colour/... unchanged
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)  # a hole: costs no disk


BAD_FILES = {  # case: (file name, how to write it, what the error must say)
    "text file": ("notes.txt", lambda p: p.write_text("not an image\n"), "not a readable PNG/JPEG image"),
    "text named .png": ("fake.png", lambda p: p.write_text("PNG? no, text"), "not a readable PNG/JPEG image"),
    "GIF": ("anim.gif", lambda p: Image.new("L", (28, 28)).save(p), "not a readable PNG/JPEG image"),
    "huge image": (  # 25 Mpx: above our limit, below the twice-as-large size at which PIL itself refuses
        "huge.png",
        lambda p: p.write_bytes(_png_header(5000, 5000)),
        f"5000x5000 pixels; images over {MAX_FILE_PIXELS:,} pixels are refused",
    ),
    "decompression bomb": ("bomb.png", lambda p: p.write_bytes(_png_header(60000, 60000)), "refused as too large to decode"),
    "huge file": ("enormous.png", lambda p: _sparse(p, MAX_FILE_BYTES + 1), f"images over {MAX_FILE_BYTES:,} bytes are refused"),
    "missing file": ("missing.png", lambda p: None, "no such file"),
    "npz of strings": ("strings.npz", lambda p: np.savez(p, x=np.full((2, 28, 28), "a")), "got dtype <U1"),
    "npz of wrong shape": ("shape.npz", lambda p: np.savez(p, x=np.zeros((3, 32, 32), np.uint8)), r"got shape \(3, 32, 32\)"),
    "empty npz": ("empty.npz", lambda p: np.savez(p, x=np.zeros((0, 28, 28), np.uint8)), r"got shape \(0, 28, 28\)"),
    "npz out of range": ("range.npz", lambda p: np.savez(p, x=np.full((1, 28, 28), 2.5)), r"float pixels must be in \[0, 1\]"),
    "corrupt npz": ("corrupt.npz", lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "not a readable .npz"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_read_inputs_rejects_bad_files_naming_the_file(tmp_path, case):
    name, write, message = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=message) as raised:
        read_inputs([path])
    assert str(raised.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", ["text named .png", "huge image", "decompression bomb", "npz of strings"])
def test_fmnist_predict_exits_2_with_the_message_and_no_traceback(tmp_path, case):
    """Bad input is refused before TensorFlow or the registry is touched, so no store is needed."""
    name, write, message = BAD_FILES[case]
    write(tmp_path / name)
    write_params(tmp_path, tiny_params())
    proc = _fmnist(tmp_path, "predict", name)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: {name}: ")
    assert re.search(message, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "mlflow.db").exists()


def test_read_inputs_mixes_uint8_images_and_float_batches(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    np.savez(tmp_path / "b.npz", x=images[1:, ..., None])  # (N, 28, 28, 1) uint8
    np.savez(tmp_path / "c.npz", x=images[1:] / 255.0)  # float 0-1
    x, names, notes = read_inputs([tmp_path / "a.png", tmp_path / "b.npz", tmp_path / "c.npz"])
    assert x.shape == (5, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x, np.concatenate([images, images[1:]]) / 255.0, atol=1e-6)
    assert names == [str(tmp_path / "a.png"), *(f"{tmp_path / n}.npz[{i}]" for n in "bc" for i in range(2))]
    assert notes == [None] * 5
