"""Atomic file writes and hashing.

Results are never left half-written: every writer goes to a temporary file in the target
folder and renames it into place, so a crash or a bad input leaves either the old file or
nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.errors import OutputError


def check_writable(path: str | os.PathLike) -> Path:
    """Raise `OutputError` unless folder `path` exists and is writable or could be created
    (its nearest existing parent is a writable folder). Creates nothing."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"output folder '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"output folder '{path}' exists and is not a folder")
        if not os.access(path, os.W_OK):
            raise OutputError(f"output folder '{path}' is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise OutputError(f"output folder '{path}': '{parent}' is a symbolic link to '{os.readlink(parent)}', which does not exist")
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot create output folder '{path}': '{parent}' is not a writable folder")
    return path


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) or raise `OutputError` naming it."""
    path = Path(path)
    check_writable(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{path}': {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder '{path}' is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, canonical_json(obj, indent=2) + "\n")


def canonical_json(obj: Any, indent: int | None = None) -> str:
    """JSON with sorted keys: the same object always gives the same text (and hash)."""
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=True, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def confined_path(root: str | os.PathLike, relative: str) -> Path:
    """Resolve `relative` inside `root`; refuse absolute paths and escapes ('..', links)."""
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root_path):
        raise OutputError(f"path '{relative}' escapes its folder '{root_path}'")
    return candidate
