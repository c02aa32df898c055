"""The official files from mirrors (HTTP(S), file:// or a folder), verified by MD5, and read back.

Each file is written to a hidden temporary name, verified by its official .gz or decompressed
content MD5, then renamed into place, so an interrupted or bad copy never looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.idx import FILES, FIX, OfficialFile, parse_idx

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


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
        raise DataError(f"{path}: missing; {FIX}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt or truncated: expected a complete gzip-compressed IDX file, found: {exc}; {FIX}"
        ) from None


def load_raw(raw_dir: Path) -> dict[str, np.ndarray]:
    """Read the four verified files as ``train_x, train_y, test_x, test_y`` uint8 arrays."""
    keys = ("train_x", "train_y", "test_x", "test_y")
    return {key: parse_idx(_read_gzip(raw_dir / spec.name), spec, str(raw_dir / spec.name)) for key, spec in zip(keys, FILES)}
