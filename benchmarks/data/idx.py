"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (optionally gzipped)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from benchmarks.errors import DataNotFoundError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    with _open(path) as fh:
        header = fh.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in _DTYPES:
            raise DataNotFoundError(f"{path} is not an IDX file (bad magic number {header!r})")
        ndim = header[3]
        shape = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        data = np.frombuffer(fh.read(), dtype=_DTYPES[header[2]])
    expected = int(np.prod(shape))
    if data.size != expected:
        raise DataNotFoundError(f"{path} is truncated: {data.size} values, header says {expected}")
    return data.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` (uint8) in IDX format; gzipped when the name ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, _CODES[array.dtype], array.ndim])
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes (and so their sha256) identical across runs.
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path
