"""Raw data: IDX parsing of damaged files, verified fetching from mirrors (directory, file://, HTTP), .npz splits."""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import logging
import shutil
import socket
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import DEBIAN_DATA, needs_real_data

from pipeline.adapters.files import load_split, save_split
from pipeline.adapters.mirrors import fetch, fetch_all, load_raw, verify
from pipeline.core.errors import DataError
from pipeline.core.idx import FILES, parse_idx

TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = FILES
SPEC_BY_NAME = {spec.name: spec for spec in FILES}


def idx(array: np.ndarray, magic: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """IDX bytes: magic (unsigned bytes, ndim), big-endian dimensions, then the data."""
    array = np.asarray(array, np.uint8)
    dims = array.shape if dims is None else dims
    magic = 0x0800 | len(dims) if magic is None else magic
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + array.tobytes()


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0)


def synthetic(spec) -> np.ndarray:
    """Full-size arrays for ``spec``: blank images (they compress to almost nothing), random labels."""
    rng = np.random.default_rng(len(spec.name))
    if spec.kind == "images":
        images = np.zeros((spec.count, 28, 28), np.uint8)
        images[:, 14, 10:18] = rng.integers(0, 256, (spec.count, 8), dtype=np.uint8)
        return images
    return rng.integers(0, 10, spec.count, dtype=np.uint8)


@pytest.fixture(scope="module")
def good_files() -> dict[str, bytes]:
    """The gzip bytes of four well-formed, full-size synthetic IDX files, by official name."""
    return {spec.name: gz(idx(synthetic(spec))) for spec in FILES}


def write_raw(raw_dir: Path, files: dict[str, bytes]) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (raw_dir / name).write_bytes(blob)
    return raw_dir


def test_good_synthetic_files_load(tmp_path, good_files):
    raw = load_raw(write_raw(tmp_path / "raw", good_files))
    assert raw["train_x"].shape == (60_000, 28, 28) and raw["train_x"].dtype == np.uint8
    assert raw["test_x"].shape == (10_000, 28, 28)
    assert raw["train_y"].shape == (60_000,) and raw["test_y"].shape == (10_000,)
    np.testing.assert_array_equal(raw["train_y"], synthetic(TRAIN_Y))


def _flip_bit(blob: bytes) -> bytes:
    """One bit flipped, from the middle on, at the first place where it changes the content.

    (In runs of zeros a flipped back-reference distance can copy identical bytes: no damage to catch.)
    """
    content = gzip.decompress(blob)
    for i in range(len(blob) // 2, len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x04
        try:
            if gzip.decompress(bytes(damaged)) == content:
                continue
        except (OSError, EOFError, zlib.error):
            pass
        return bytes(damaged)
    raise AssertionError("no damaging bit flip found")


def _wrong_dims(spec) -> bytes:
    if spec.kind == "images":  # 28x27 images with matching data: a reshape would "work"
        return gz(idx(np.zeros((spec.count, 28, 27), np.uint8)))
    return gz(idx(np.zeros((spec.count, 1), np.uint8)))  # labels as a 2-D array


def _wrong_magic(spec) -> bytes:
    ndim = 3 if spec.kind == "images" else 1
    return gz(idx(synthetic(spec), magic=0x0D00 | ndim))  # float data instead of unsigned bytes


def _wrong_count(spec) -> bytes:
    return gz(idx(synthetic(spec)[:-1]))


def _short_data(spec) -> bytes:
    """The header promises ``count`` items; one byte of data is missing."""
    data = synthetic(spec)
    return gz(idx(data, dims=data.shape)[:-1])


# kind -> (how to damage a good file of `spec` given its gzip bytes, what the message must say)
DAMAGE = {
    "truncated-1kb": (lambda spec, blob: blob[:-1024], "gzip"),
    "truncated-half": (lambda spec, blob: blob[: len(blob) // 2], "gzip"),
    "flipped-bit": (lambda spec, blob: _flip_bit(blob), "gzip"),
    "empty": (lambda spec, blob: b"", "header of"),
    "not-gzip": (lambda spec, blob: idx(synthetic(spec)), "gzip"),
    "wrong-magic": (lambda spec, blob: _wrong_magic(spec), "magic number"),
    "wrong-dimensions": (lambda spec, blob: _wrong_dims(spec), ""),
    "wrong-count": (lambda spec, blob: _wrong_count(spec), "dimensions"),
    "short-data": (lambda spec, blob: _short_data(spec), "data bytes after the header"),
}


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("spec", FILES, ids=[s.name.split(".")[0] for s in FILES])
def test_damaged_file_is_caught_naming_file_expected_and_found(tmp_path, good_files, spec, kind):
    damage, says = DAMAGE[kind]
    files = dict(good_files)
    files[spec.name] = damage(spec, good_files[spec.name])
    raw_dir = write_raw(tmp_path / "raw", files)
    with pytest.raises(DataError) as err:
        load_raw(raw_dir)
    message = str(err.value)
    assert str(raw_dir / spec.name) in message
    assert "expected" in message and "found" in message
    assert says in message
    assert "dvc repro download" in message  # what to do


@pytest.mark.parametrize("spec", [TRAIN_Y, TEST_Y], ids=["train-labels", "test-labels"])
def test_label_out_of_range(tmp_path, good_files, spec):
    labels = synthetic(spec).copy()
    labels[123] = 10
    raw_dir = write_raw(tmp_path / "raw", good_files | {spec.name: gz(idx(labels))})
    with pytest.raises(DataError, match=r"expected labels 0-9, found label 10") as err:
        load_raw(raw_dir)
    assert str(raw_dir / spec.name) in str(err.value)


def test_train_and_test_files_swapped(tmp_path, good_files):
    swapped = good_files | {
        TRAIN_X.name: good_files[TEST_X.name],
        TEST_X.name: good_files[TRAIN_X.name],
        TRAIN_Y.name: good_files[TEST_Y.name],
        TEST_Y.name: good_files[TRAIN_Y.name],
    }
    raw_dir = write_raw(tmp_path / "raw", swapped)
    with pytest.raises(DataError, match=r"expected dimensions \(60000, 28, 28\), found \(10000, 28, 28\)") as err:
        load_raw(raw_dir)
    assert str(raw_dir / TRAIN_X.name) in str(err.value)


def test_missing_file(tmp_path, good_files):
    raw_dir = write_raw(tmp_path / "raw", {k: v for k, v in good_files.items() if k != TEST_Y.name})
    with pytest.raises(DataError, match="missing") as err:
        load_raw(raw_dir)
    assert TEST_Y.name in str(err.value)


def test_parse_idx_small_spec_messages():
    spec = dataclasses.replace(TEST_Y, count=5)
    assert parse_idx(idx(np.arange(5)), spec).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match=r"labels.bin: bad IDX labels file: expected magic number 0x00000801"):
        parse_idx(idx(np.zeros((5, 1))), spec, "labels.bin")
    with pytest.raises(DataError, match=r"expected dimensions \(5,\), found \(4,\)"):
        parse_idx(idx(np.arange(4)), spec)
    with pytest.raises(DataError, match=r"expected 5 data bytes after the header, found 6"):
        parse_idx(idx(np.arange(6), dims=(5,)), spec)


# --- fetching from mirrors ------------------------------------------------------------------


def _damaged_mirror(root: Path, how) -> Path:
    """A mirror folder holding a damaged copy of each real file."""
    root.mkdir(parents=True)
    for spec in FILES:
        (root / spec.name).write_bytes(how((DEBIAN_DATA / spec.name).read_bytes()))
    return root


def _assert_nothing_complete_looking(raw_dir: Path) -> None:
    """No official name, no temporary or partial file: the folder is empty."""
    assert sorted(p.name for p in raw_dir.iterdir()) == [] if raw_dir.exists() else True


@needs_real_data
def test_fetch_falls_through_a_corrupt_mirror_to_a_good_one(tmp_path, caplog):
    corrupt = _damaged_mirror(tmp_path / "corrupt", lambda b: b[:-1024])
    raw_dir = tmp_path / "raw"
    with caplog.at_level(logging.WARNING, logger="pipeline.adapters.mirrors"):
        paths = fetch_all((str(corrupt), str(DEBIAN_DATA)), raw_dir)
    assert [p.name for p in paths] == [spec.name for spec in FILES]
    for path, spec in zip(paths, FILES):
        assert verify(path, spec) is None
        assert path.read_bytes() == (DEBIAN_DATA / spec.name).read_bytes()
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(spec.name for spec in FILES)  # no leftovers
    assert sum("checksum mismatch" in r.message and str(corrupt) in r.message for r in caplog.records) == 4
    assert load_raw(raw_dir)["train_x"].shape == (60_000, 28, 28)


def test_all_mirrors_bad_names_file_checksum_and_every_mirror(tmp_path, good_files):
    spec = TEST_Y
    official = good_files[spec.name]  # well-formed but not the official bytes: fails the checksum
    mirrors = []
    for name, blob in [("other", official), ("truncated", official[:-1024]), ("flipped", _flip_bit(official))]:
        (tmp_path / name).mkdir()
        (tmp_path / name / spec.name).write_bytes(blob)
        mirrors.append(str(tmp_path / name))
    (tmp_path / "empty").mkdir()
    mirrors.append(str(tmp_path / "empty"))
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / spec.name).write_bytes(official[:100])  # a stale bad copy from an earlier attempt
    with pytest.raises(DataError) as err:
        fetch(spec, tuple(mirrors), raw_dir)
    message = str(err.value)
    assert "checksum" in message and spec.name in message
    assert spec.gz_md5 in message and spec.content_md5 in message
    for mirror in mirrors:
        assert mirror in message
    assert "unavailable" in message  # the empty mirror
    _assert_nothing_complete_looking(raw_dir)


@needs_real_data
def test_file_url_mirror_with_an_encoded_path(tmp_path):
    mirror = tmp_path / "a mirror"  # a space: file:// URLs encode it as %20
    mirror.mkdir()
    shutil.copy(DEBIAN_DATA / TEST_Y.name, mirror)
    url = mirror.as_uri()
    assert "%20" in url
    path = fetch(TEST_Y, (url,), tmp_path / "raw")
    assert verify(path, TEST_Y) is None


# --- HTTP mirrors: a real server on 127.0.0.1 in a thread -----------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _CutOff(http.server.BaseHTTPRequestHandler):
    """Sends half of the requested file, then drops the connection."""

    protocol_version = "HTTP/1.1"
    chunked = False
    root: Path

    def do_GET(self):
        data = (self.root / Path(self.path).name).read_bytes()
        self.send_response(200)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(data) + data[: len(data) // 2])
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextmanager
def serve(handler) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _serve_dir(directory: Path):
    return serve(lambda *a, **kw: _Quiet(*a, directory=str(directory), **kw))


@pytest.fixture
def label_mirrors(tmp_path) -> dict[str, Path]:
    """Folders with the real label files: good ones, and copies truncated to half."""
    if not (DEBIAN_DATA / TEST_Y.name).exists():
        pytest.skip("real Fashion-MNIST not installed")
    good, truncated = tmp_path / "good", tmp_path / "truncated"
    good.mkdir()
    truncated.mkdir()
    for spec in (TRAIN_Y, TEST_Y):
        blob = (DEBIAN_DATA / spec.name).read_bytes()
        (good / spec.name).write_bytes(blob)
        (truncated / spec.name).write_bytes(blob[: len(blob) // 2])
    return {"good": good, "truncated": truncated}


def test_http_mirror_good(tmp_path, label_mirrors):
    with _serve_dir(label_mirrors["good"]) as url:
        path = fetch(TRAIN_Y, (url,), tmp_path / "raw", timeout=5)
    assert verify(path, TRAIN_Y) is None
    assert sorted(p.name for p in path.parent.iterdir()) == [TRAIN_Y.name]


def test_http_mirror_truncated_file_falls_through(tmp_path, label_mirrors, caplog):
    with _serve_dir(label_mirrors["truncated"]) as bad, _serve_dir(label_mirrors["good"]) as good:
        with caplog.at_level(logging.WARNING, logger="pipeline.adapters.mirrors"):
            path = fetch(TEST_Y, (bad, good), tmp_path / "raw", timeout=5)
    assert verify(path, TEST_Y) is None
    assert any(bad in r.message and "checksum mismatch" in r.message for r in caplog.records)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_http_connection_cut_off_falls_through(tmp_path, label_mirrors, chunked, caplog):
    handler = type("Handler", (_CutOff,), {"root": label_mirrors["good"], "chunked": chunked})
    raw_dir = tmp_path / "raw"
    with serve(handler) as cut, _serve_dir(label_mirrors["good"]) as good:
        path = fetch(TEST_Y, (cut, good), raw_dir, timeout=5)
    assert verify(path, TEST_Y) is None
    assert sorted(p.name for p in raw_dir.iterdir()) == [TEST_Y.name]  # no partial file left
    assert any(cut in r.message for r in caplog.records)


def test_http_only_bad_mirrors(tmp_path, label_mirrors):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    handler = type("Handler", (_CutOff,), {"root": label_mirrors["good"], "chunked": True})
    with _serve_dir(label_mirrors["truncated"]) as bad, _serve_dir(tmp_path / "raw") as missing, serve(handler) as cut:
        with pytest.raises(DataError, match="checksum") as err:
            fetch(TEST_Y, (bad, missing, cut), raw_dir, timeout=5)
    message = str(err.value)
    assert all(url in message for url in (bad, missing, cut))
    assert "404" in message or "Not Found" in message
    _assert_nothing_complete_looking(raw_dir)


def test_http_mirror_that_never_answers_times_out(tmp_path, label_mirrors):
    with socket.socket() as listener:  # accepts connections, never responds
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with _serve_dir(label_mirrors["good"]) as good:
            path = fetch(TEST_Y, (silent, good), tmp_path / "raw", timeout=0.5)
    assert verify(path, TEST_Y) is None


# --- prepared splits ----------------------------------------------------------------------


@pytest.fixture
def split_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    save_split(path, rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64, dtype=np.uint8))
    return path


def test_split_round_trip(split_file):
    x, y = load_split(split_file)
    assert x.shape == (64, 28, 28) and x.dtype == np.uint8 and y.shape == (64,) and y.dtype == np.uint8
    assert sorted(p.name for p in split_file.parent.iterdir()) == ["train.npz"]  # no temporary left


def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


BAD_SPLITS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\x00not a zip file" * 100),
    "missing-array": lambda p: _savez(p, x=np.zeros((4, 28, 28), np.uint8)),
    "wrong-shape": lambda p: _savez(p, x=np.zeros((4, 28, 27), np.uint8), y=np.zeros(4, np.uint8)),
    "wrong-dtype": lambda p: _savez(p, x=np.zeros((4, 28, 28), np.float32), y=np.zeros(4, np.uint8)),
    "length-mismatch": lambda p: _savez(p, x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(5, np.uint8)),
    "label-out-of-range": lambda p: _savez(p, x=np.zeros((4, 28, 28), np.uint8), y=np.full(4, 12, np.uint8)),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", BAD_SPLITS.values(), ids=BAD_SPLITS.keys())
def test_damaged_split_raises_data_error(split_file, damage):
    damage(split_file)
    with pytest.raises(DataError, match=str(split_file)):
        load_split(split_file)


def test_every_single_byte_corruption_of_a_split_is_caught_or_harmless(tmp_path):
    """Flip one byte at a time: load_split either raises DataError or returns the original arrays."""
    rng = np.random.default_rng(1)
    split_file = tmp_path / "val.npz"
    save_split(split_file, rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), rng.integers(0, 10, 12, dtype=np.uint8))
    good = split_file.read_bytes()
    x0, y0 = load_split(split_file)
    caught = harmless = 0
    for i in range(0, len(good), 7):
        damaged = bytearray(good)
        damaged[i] ^= 0xFF
        split_file.write_bytes(bytes(damaged))
        try:
            x, y = load_split(split_file)
        except DataError:
            caught += 1
            continue
        assert np.array_equal(x, x0) and np.array_equal(y, y0), f"byte {i}: corrupt data loaded silently"
        harmless += 1
    assert caught > harmless
