"""Datasets and standardized splits.

    from benchmarks.data import load_split
    train = load_split("digits", "train")        # verified against its checked-in manifest

Split names: `train`, `val` (held out from the official training set) and `test` (the
official test set). Every tunable is chosen on `val`; `test` is evaluated once per final
model, by the harness.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

# Importing the dataset modules registers them.
from benchmarks.data import cifar as _cifar  # noqa: F401
from benchmarks.data import digits as _digits  # noqa: F401
from benchmarks.data import fashion_mnist as _fashion_mnist  # noqa: F401
from benchmarks.data import imagenet as _imagenet  # noqa: F401
from benchmarks.data import lfw_b as _lfw_b  # noqa: F401
from benchmarks.data.base import (
    DatasetInfo,
    DatasetSource,
    TensorSplit,
    check_split_name,
    data_roots,
    get_source,
    list_datasets,
)
from benchmarks.data.manifest import Manifest
from benchmarks.data.options import DatasetOptions
from benchmarks.errors import DynbenchError

__all__ = [
    "DatasetInfo",
    "DatasetOptions",
    "DatasetSource",
    "Manifest",
    "TensorSplit",
    "data_roots",
    "dataset_info",
    "dataset_status",
    "get_source",
    "list_datasets",
    "load_split",
    "prepare_dataset",
    "verify_dataset",
]


def dataset_info(name: str, options: dict[str, Any] | None = None) -> DatasetInfo:
    """The dataset's info; with `options` (config `dataset.options`), as the models see it."""
    info = get_source(name).info
    return DatasetOptions.parse(options, info).info(info) if options else info


def load_split(
    name: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    manifest: Manifest | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Load one standardized split, verifying its manifest and source files first.

    `manifest` overrides the checked-in manifest (tests build one for fixture files).
    `options` are the config's `dataset.options` (see `benchmarks.data.options`).
    """
    source = get_source(name)
    check_split_name(split)
    parsed = DatasetOptions.parse(options, source.info) if options else None
    folder = source.locate(data_root)
    manifest = source.verify(folder, manifest)
    if split not in manifest.splits:
        raise DynbenchError(f"dataset '{name}' has no '{split}' split in {manifest.path}")
    data = source.load_split(folder, manifest, split)
    return parsed.apply(data, split) if parsed else data


def verify_dataset(name: str, data_root: str | os.PathLike | None = None) -> tuple[Path, Manifest]:
    source = get_source(name)
    folder = source.locate(data_root)
    return folder, source.verify(folder)


def prepare_dataset(
    name: str, data_root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    return get_source(name).prepare(data_root, download=download)


def dataset_status(name: str, data_root: str | os.PathLike | None = None) -> str | None:
    """The folder holding the dataset, or None where it is not found."""
    source = get_source(name)
    for folder in source.candidate_dirs(data_root):
        if source.is_present(folder):
            return str(folder)
    return None
