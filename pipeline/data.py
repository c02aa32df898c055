"""Fashion-MNIST files: checksums, verified atomic fetching from mirrors, and IDX parsing."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from pipeline.config import PipelineError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialFile:
    """One of the four official files, with both accepted checksums."""

    name: str
    gz_md5: str
    content_md5: str
    kind: str  # "images" or "labels"
    count: int


FILES = (
    OfficialFile(
        "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a", "images", 60_000
    ),
    OfficialFile(
        "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9", "labels", 60_000
    ),
    OfficialFile(
        "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a", "images", 10_000
    ),
    OfficialFile(
        "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965", "labels", 10_000
    ),
)
_FIX = "delete data/raw/ and run `dvc repro download` to fetch verified copies"


class DataError(PipelineError, RuntimeError):
    """Raw data is missing, corrupt or not what the pipeline expects. Never retried."""


def checksums(path: Path) -> tuple[str, str | None]:
    """MD5 of the file as stored, and of its gzip-decompressed content (None if not valid gzip)."""
    gz_md5 = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            gz_md5.update(chunk)
    content = hashlib.md5()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                content.update(chunk)
    except (OSError, EOFError, zlib.error):
        return gz_md5.hexdigest(), None
    return gz_md5.hexdigest(), content.hexdigest()


def verify(path: Path, spec: OfficialFile) -> str | None:
    """None when ``path`` is a good copy of ``spec`` (by .gz or content MD5), else the reason."""
    gz, content = checksums(path)
    if gz == spec.gz_md5 or content == spec.content_md5:
        return None
    got = f"gz MD5 {gz}, content MD5 {content or 'unreadable (not a complete gzip file)'}"
    return f"checksum mismatch: expected gz MD5 {spec.gz_md5} or content MD5 {spec.content_md5}, got {got}"


def _copy_from(source: str, dest: Path, timeout: float) -> None:
    """Copy one file from a URL or local path into ``dest``; raise OSError when unavailable."""
    scheme = urlparse(source).scheme
    if scheme in ("http", "https"):
        _download(source, dest, timeout)
        return
    path = Path(url2pathname(urlparse(source).path) if scheme == "file" else source)  # file:// URLs are %-encoded
    with open(path, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)


def _download(url: str, dest: Path, timeout: float) -> None:
    from tqdm import tqdm  # only network downloads need a progress bar

    request = urllib.request.Request(url, headers={"User-Agent": "fashion-mnist-pipeline"})
    with urllib.request.urlopen(request, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(dest).name.lstrip(".")) as bar:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _join(mirror: str, name: str) -> str:
    return mirror.rstrip("/") + "/" + name


def fetch(spec: OfficialFile, mirrors: tuple[str, ...], dest_dir: Path, timeout: float = 20.0) -> Path:
    """Fetch one verified file into ``dest_dir``, trying ``mirrors`` in order.

    The file is written to a hidden temporary name, verified, then renamed, so a failure
    or interruption never leaves a complete-looking file behind.

    Raises:
        DataError: naming the file, the expected and actual checksums and every mirror tried.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.name
    if dest.exists():
        if verify(dest, spec) is None:
            return dest
        dest.unlink()  # a bad copy must not stay behind looking complete
    tmp = dest_dir / f".{spec.name}.{os.getpid()}.part"
    tried = []
    for mirror in mirrors:
        source = _join(mirror, spec.name)
        try:
            _copy_from(source, tmp, timeout)
            problem = verify(tmp, spec)
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:  # IncompleteRead: cut off
            reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
            problem = f"unavailable ({reason})"
        except BaseException:  # interrupted (Ctrl-C): leave no partial file behind
            tmp.unlink(missing_ok=True)
            raise
        if problem is None:
            os.replace(tmp, dest)
            log.info("%s: verified copy from %s", spec.name, mirror)
            return dest
        tmp.unlink(missing_ok=True)
        log.warning("%s from %s: %s", spec.name, mirror, problem)
        tried.append(f"  - {source}: {problem}")
    raise DataError(
        f"{spec.name}: no mirror has a good copy (checksum verification failed or file unavailable).\n"
        f"Expected gz MD5 {spec.gz_md5} or decompressed content MD5 {spec.content_md5}.\n"
        "Mirrors tried:\n" + "\n".join(tried) + "\n"
        "Fix: add a mirror with the official files to data.mirrors in params.yaml, or on Debian "
        "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)."
    )


def fetch_all(mirrors: tuple[str, ...], dest_dir: Path, timeout: float = 20.0) -> list[Path]:
    """Fetch all four official files; see :func:`fetch`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    return [fetch(spec, mirrors, dest_dir, timeout) for spec in FILES]


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {_FIX}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt or truncated: expected a complete gzip-compressed IDX file, found: {exc}; {_FIX}"
        ) from None


def parse_idx(raw: bytes, spec: OfficialFile, source: str = "") -> np.ndarray:
    """Parse and validate an IDX buffer: magic, dimensions, counts, sizes and label range.

    Returns:
        (count, 28, 28) uint8 images or (count,) uint8 labels.
    """
    where = source or spec.name
    ndim = 3 if spec.kind == "images" else 1
    magic = 0x0800 | ndim  # unsigned byte data, ndim dimensions
    expected_dims = (spec.count, 28, 28) if ndim == 3 else (spec.count,)
    header = 4 + 4 * ndim

    def fail(what: str, found: object) -> DataError:
        return DataError(f"{where}: bad IDX {spec.kind} file: expected {what}, found {found}; {_FIX}")

    if len(raw) < header:
        raise fail(f"a header of {header} bytes", f"{len(raw)} bytes in total")
    got_magic = int.from_bytes(raw[:4], "big")
    if got_magic != magic:
        raise fail(f"magic number 0x{magic:08x} ({spec.kind}, {ndim} dimension(s))", f"0x{got_magic:08x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != expected_dims:
        raise fail(f"dimensions {expected_dims}", dims)
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise fail(f"{size} data bytes after the header", f"{len(raw) - header}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if ndim == 1 and array.max(initial=0) > 9:
        raise fail("labels 0-9", f"label {int(array.max())}")
    return array


def load_raw(raw_dir: Path) -> dict[str, np.ndarray]:
    """Read the four verified files as ``train_x, train_y, test_x, test_y`` uint8 arrays."""
    keys = ("train_x", "train_y", "test_x", "test_y")
    return {key: parse_idx(_read_gzip(raw_dir / spec.name), spec, str(raw_dir / spec.name)) for key, spec in zip(keys, FILES)}
