"""Dataset sources, data roots and the split loader.

A `DatasetSource` knows one dataset's on-disk format: where its files may be, which files
the manifest checksums, how to read a source pool (e.g. the official training set) and how
the standardized splits were made. `load_split(name, split)` is the one entry point the rest
of the suite uses; it finds the files, verifies the manifest and the source checksums, and
returns a `torch.utils.data.Dataset`.

Data roots are searched in this order: the explicit `data_root` (CLI `--data-root`),
`$DYNBENCH_DATA`, `~/.cache/dynbench`, then the dataset's own system folders (for
fashion-mnist, /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist package).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.data.manifest import SPLIT_NAMES, Manifest, load_manifest, manifest_path
from benchmarks.errors import DataNotFoundError, ManifestMismatchError, UnknownNameError
from benchmarks.io import sha256_file

DEFAULT_CACHE_ROOT = Path("~/.cache/dynbench")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W as the models see it
    description: str
    how_to_get: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    metric: str = "accuracy"
    embedded: bool = False  # ships with an installed package: never downloaded
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: a 2-level class hierarchy: ((super-class name, (class index, ...)), ...); empty if none
    hierarchy: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class FileCheck:
    """The checksum status of one source file (or file list) that a manifest records."""

    name: str  # the manifest's key for it
    path: Path
    algorithm: str
    expected: str
    actual: str | None  # None: missing
    hint: str = ""  # what to do about a mismatch, where the default advice does not fit

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


class DatasetSource(ABC):
    """One dataset's on-disk format and split procedure. Subclasses register themselves."""

    info: DatasetInfo
    #: folders searched after the user's roots (e.g. a Debian package's data folder)
    system_dirs: tuple[Path, ...] = ()
    #: sub-folders of a data root that may hold this dataset, in order of preference
    subdirs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.info.name

    # --- locating files -------------------------------------------------------------------
    def candidate_dirs(self, data_root: str | os.PathLike | None = None) -> list[Path]:
        roots = data_roots(data_root)
        dirs = [root / sub for root in roots for sub in (self.subdirs or (self.name,))]
        return dirs + list(self.system_dirs)

    def locate(self, data_root: str | os.PathLike | None = None) -> Path:
        """The first candidate folder that holds the dataset's files."""
        tried = self.candidate_dirs(data_root)
        for folder in tried:
            if self.is_present(folder):
                return folder
        looked = "\n  ".join(str(p) for p in tried)
        raise DataNotFoundError(
            f"dataset '{self.name}' was not found. Looked in:\n  {looked}\n{self.info.how_to_get}"
        )

    def is_present(self, folder: Path) -> bool:
        return folder.is_dir() and all(p.is_file() for p in self.source_files(folder).values())

    @abstractmethod
    def source_files(self, folder: Path) -> dict[str, Path]:
        """Files whose checksums the manifest records, keyed by their manifest name."""

    # --- manifests ------------------------------------------------------------------------
    def manifest(self, folder: Path | None = None) -> Manifest:
        """The checked-in manifest (datasets built from user file trees override this)."""
        return load_manifest(manifest_path(self.name))

    @abstractmethod
    def build_manifest(self, folder: Path) -> Manifest:
        """Make the manifest from the source files with the documented, seeded procedure."""

    def split_counts(self) -> dict[str, int]:
        """The size of each standardized split, as the checked-in manifest defines it."""
        return {name: len(entry.indices) for name, entry in self.manifest().splits.items()}

    def file_checks(self, folder: Path, manifest: Manifest) -> list[FileCheck]:
        """Checksum every source file the manifest records (missing files have actual=None)."""
        return checksum_files(self.source_files(folder), folder, manifest.source_files)

    def verify(
        self,
        folder: Path,
        manifest: Manifest | None = None,
        *,
        full: bool = False,
        on_check: Callable[[FileCheck], None] | None = None,
    ) -> Manifest:
        """Check index-list hashes and source-file checksums; return the manifest.

        `full` also rebuilds the manifest from the source files with the documented procedure
        and checks that every split comes out identical. `on_check` sees every file's status
        (the CLI prints them) before the first failure is raised.
        """
        manifest = manifest or self.manifest(folder)
        manifest.verify_index_lists()
        self._raise_on_failed_checks(folder, manifest, self.file_checks(folder, manifest), on_check)
        if full:
            check_rebuilt(manifest, self.build_manifest(folder))
        return manifest

    def _raise_on_failed_checks(
        self,
        folder: Path,
        manifest: Manifest,
        checks: list[FileCheck],
        on_check: Callable[[FileCheck], None] | None,
    ) -> None:
        for check in checks:
            if on_check is not None:
                on_check(check)
        for check in checks:
            if check.actual is None:
                raise DataNotFoundError(
                    f"dataset '{self.name}': {check.path}: {check.hint}"
                    if check.hint
                    else f"dataset '{self.name}': source file '{check.name}' is missing from {folder}"
                )
            if not check.ok:
                raise ManifestMismatchError(
                    f"dataset '{self.name}': {check.path} has {check.algorithm} {check.actual}, but "
                    f"the manifest {manifest.path or '(built)'} records {check.expected}. "
                    + (
                        check.hint
                        or "The file is corrupt or a different version; delete it and run "
                        f"`dynbench data prepare {self.name}`."
                    )
                )

    # --- loading --------------------------------------------------------------------------
    @abstractmethod
    def load_split(self, folder: Path, manifest: Manifest, split: str) -> Dataset:
        """Return the split as a Dataset of (image tensor C×H×W float, int label)."""

    def prepare(self, data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
        """Make the dataset usable: find (or download, where supported) and verify it."""
        folder = self.locate(data_root)
        self.verify(folder)
        return folder


def check_rebuilt(manifest: Manifest, rebuilt: Manifest) -> None:
    """Raise unless every split of `rebuilt` (made again from the files) equals `manifest`'s."""
    where = manifest.path or f"manifest of {manifest.dataset}"
    for name in sorted(set(manifest.splits) | set(rebuilt.splits)):
        have = manifest.splits.get(name)
        again = rebuilt.splits.get(name)
        have_hash = have.sha256 if have else "(no such split)"
        again_hash = again.sha256 if again else "(no such split)"
        if have_hash != again_hash:
            raise ManifestMismatchError(
                f"split '{name}' in {where} has index-list sha256 {have_hash}, but rebuilding it "
                f"from the source files with the manifest's procedure gives {again_hash}. "
                "The source files or the procedure differ from the ones the manifest was made from."
            )


def checksum_files(
    files: dict[str, Path], folder: Path, records: dict[str, dict[str, str]]
) -> list[FileCheck]:
    """One `FileCheck` per recorded file: its path (from `files`, else `folder / name`), the
    recorded digest and the actual one (None where the file is missing)."""
    checks = []
    for rel, record in records.items():
        path = files.get(rel, folder / rel)
        actual = file_digest(path, record["algorithm"]) if path.is_file() else None
        checks.append(FileCheck(rel, path, record["algorithm"], record["digest"], actual))
    return checks


def file_digest(path: Path, algorithm: str) -> str:
    if algorithm == "sha256":
        return sha256_file(path)
    if algorithm == "md5":
        import hashlib

        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    raise ManifestMismatchError(f"unknown checksum algorithm '{algorithm}' for {path}")


def data_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """The user data roots, in search order (explicit, $DYNBENCH_DATA, ~/.cache/dynbench)."""
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    env = os.environ.get("DYNBENCH_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(DEFAULT_CACHE_ROOT.expanduser())
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


class TensorSplit(Dataset):
    """An in-memory split: float images N×C×H×W (normalized) and int64 labels N.

    Indexing returns `(image, label)`; `transform`, if given, is applied to the image.
    The whole-split tensors are exposed as `.images` and `.targets` for fast batched use.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        info: DatasetInfo,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(images) != len(targets):
            raise ValueError("images and targets differ in length")
        self.images, self.targets, self.info, self.split = images, targets, info, split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def normalize_uint8(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N×H×W[×C] -> float N×C×H×W scaled to [0, 1] and standardized."""
    array = images.astype(np.float32) / 255.0
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (tensor - m) / s


_SOURCES: dict[str, DatasetSource] = {}


def register_dataset(cls: type[DatasetSource]) -> type[DatasetSource]:
    source = cls()
    _SOURCES[source.name] = source
    return cls


def get_source(name: str) -> DatasetSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise UnknownNameError("dataset", name, _SOURCES) from None


def list_datasets() -> list[str]:
    return sorted(_SOURCES)


def check_split_name(split: str) -> str:
    if split not in SPLIT_NAMES:
        raise UnknownNameError("split", split, SPLIT_NAMES)
    return split
