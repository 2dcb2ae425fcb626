"""Readers for raw dataset files with integrity checks and clear errors."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from siddm_lab.errors import DataError

VERIFY_MODES = ("md5", "size", "none")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def file_digest(path: Path, algorithm: str = "md5", chunk: int = 1 << 22) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def check_file(path: Path, *, md5: str | None, size: int | None, verify: str, what: str) -> None:
    """Raise DataError naming the path when a file is missing or fails its check."""
    if verify not in VERIFY_MODES:
        raise DataError(f"dataset.reader.verify={verify!r} is unknown; allowed: {', '.join(VERIFY_MODES)}")
    if not path.is_file():
        raise DataError(f"{what}: expected the file {path}, which does not exist")
    if verify in ("md5", "size") and size is not None and path.stat().st_size != size:
        raise DataError(
            f"{what}: {path} has {path.stat().st_size} bytes, expected {size}; the file is incomplete "
            f"or corrupt (set dataset.reader.verify=none to skip this check on non-official files)"
        )
    if verify == "md5" and md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise DataError(
                f"{what}: {path} has md5 {got}, expected {md5}; the file is corrupt or not the official "
                f"release (set dataset.reader.verify=none to skip this check on non-official files)"
            )


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST format), optionally gzip-compressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt .gz stream
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() if data else 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header truncated")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX header announces shape {dims} ({expected} bytes) but the file has {len(data)} bytes; "
            f"the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).copy()
