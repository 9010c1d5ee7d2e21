"""Fashion-MNIST (Xiao et al. 2017) from its gzipped IDX files.

Found in a data root as `fashion-mnist/` or torchvision's `FashionMNIST/raw/`, or in
/usr/share/datasets/fashion-mnist where Debian's `dataset-fashion-mnist` package puts it.
Splits: `test` is the official 10,000-image test set; `val` is a stratified 5,000 held out
from the official 60,000 training images (seed 0); `train` is the other 55,000.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from benchmarks.data.base import (
    DatasetInfo,
    DatasetSource,
    TensorSplit,
    data_roots,
    file_digest,
    normalize_uint8,
    register_dataset,
)
from benchmarks.data.idx import read_idx
from benchmarks.data.manifest import Manifest, SplitEntry, stratified_holdout
from benchmarks.errors import DataNotFoundError

FMNIST_SEED = 0
FMNIST_VAL = 5000
_FILES = {
    "train-images-idx3-ubyte.gz": ("train", "images"),
    "train-labels-idx1-ubyte.gz": ("train", "labels"),
    "t10k-images-idx3-ubyte.gz": ("test", "images"),
    "t10k-labels-idx1-ubyte.gz": ("test", "labels"),
}
CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


@register_dataset
class FashionMNIST(DatasetSource):
    info = DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        input_shape=(1, 28, 28),
        description="Fashion-MNIST: 28x28 grayscale Zalando article images, 10 classes",
        how_to_get=(
            "Get it with one of:\n"
            "  apt-get install dataset-fashion-mnist     (Debian/Ubuntu: /usr/share/datasets/fashion-mnist)\n"
            "  dynbench data prepare fashion-mnist       (torchvision download, needs the network)\n"
            "or put the four *-ubyte.gz files in <data-root>/fashion-mnist/."
        ),
        mean=(0.2860,),
        std=(0.3530,),
        class_names=CLASS_NAMES,
    )
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    subdirs = ("fashion-mnist", "FashionMNIST/raw")

    def source_files(self, folder: Path) -> dict[str, Path]:
        return {name: folder / name for name in _FILES}

    def _pool(self, folder: Path, pool: str) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if pool == "train" else "t10k"
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(images) != len(labels):
            raise DataNotFoundError(f"{folder}: {pool} images and labels differ in count")
        return images, labels

    def build_manifest(self, folder: Path) -> Manifest:
        _, labels = self._pool(folder, "train")
        _, test_labels = self._pool(folder, "test")
        train, val = stratified_holdout(labels, min(FMNIST_VAL, len(labels) // 12 or 1), FMNIST_SEED)
        return Manifest(
            dataset=self.name,
            seed=FMNIST_SEED,
            procedure=(
                "val: stratified hold-out of 5000 (1/12 of the pool for smaller copies) from the "
                f"official training images (numpy default_rng({FMNIST_SEED})); train: the rest of "
                "the official training images; test: the official t10k images, in file order."
            ),
            splits={
                "train": SplitEntry.build("train", train),
                "val": SplitEntry.build("train", val),
                "test": SplitEntry.build("test", np.arange(len(test_labels))),
            },
            source_files={
                rel: {"algorithm": "sha256", "digest": file_digest(p, "sha256")}
                for rel, p in self.source_files(folder).items()
            },
        )

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> TensorSplit:
        entry = manifest.splits[split]
        images, labels = self._pool(folder, entry.pool)
        idx = np.asarray(entry.indices, dtype=np.int64)
        x = normalize_uint8(images[idx], self.info.mean, self.info.std)
        return TensorSplit(x, torch.from_numpy(labels[idx]), self.info, split)

    def prepare(self, data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
        try:
            return super().prepare(data_root)
        except DataNotFoundError:
            if not download:
                raise
        target = data_roots(data_root)[0]
        try:
            from torchvision.datasets import FashionMNIST as TVFashionMNIST

            TVFashionMNIST(str(target), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataNotFoundError(
                f"could not download fashion-mnist into {target} ({exc}).\n{self.info.how_to_get}"
            ) from exc
        return super().prepare(data_root)
