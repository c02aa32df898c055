"""The four official Fashion-MNIST files (names, checksums, counts) and the IDX format's parser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import DataError


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
FIX = "delete data/raw/ and run `dvc repro download` to fetch verified copies"


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
        return DataError(f"{where}: bad IDX {spec.kind} file: expected {what}, found {found}; {FIX}")

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
