"""Dataset options: documented, config-level variants of a dataset's standardized splits.

    dataset:
      name: fashion-mnist
      options:
        pad_to: 32              # zero-pad to 32×32 (black pixels, before normalization),
                                # so CIFAR-sized backbones run on 28×28 data
        positive_classes: [8]   # binary task: label 1 for these classes, 0 for the rest;
                                # the metric becomes the F-score of class 1
        train_subset: 6000      # a stratified, seeded subset of `train` for CPU-sized runs;
                                # `val` and `test` always stay whole

Options never change which samples belong to `val` or `test`, so selection and evaluation
stay on the standardized splits. The engine and the harness apply them the same way
(`load_split(..., options=...)`), so a model is evaluated on exactly the task it was trained on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmarks.data.base import DatasetInfo, TensorSplit
from benchmarks.data.manifest import stratified_holdout
from benchmarks.errors import ConfigError

SUBSET_SEED = 0


@dataclass(frozen=True)
class DatasetOptions:
    pad_to: int | None = None
    positive_classes: tuple[int, ...] = ()
    train_subset: int | None = None

    @classmethod
    def parse(cls, options: dict[str, Any] | None, info: DatasetInfo, where: str = "config") -> DatasetOptions:
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key 'dataset.options.{unknown[0]}'; allowed: {', '.join(sorted(known))}"
            )
        pad_to = options.get("pad_to")
        if pad_to is not None and (not _is_int(pad_to) or pad_to < max(info.input_shape[1:])):
            raise ConfigError(
                f"{where}: key 'dataset.options.pad_to' must be an integer >= the image size "
                f"{max(info.input_shape[1:])}, got {pad_to!r}"
            )
        positives = options.get("positive_classes", [])
        if not isinstance(positives, list) or not all(_is_int(c) and 0 <= c < info.num_classes for c in positives) or len(set(positives)) >= info.num_classes:
            raise ConfigError(
                f"{where}: key 'dataset.options.positive_classes' must be a list of class indices "
                f"in 0..{info.num_classes - 1} (not all of them), got {positives!r}"
            )
        subset = options.get("train_subset")
        if subset is not None and (not _is_int(subset) or subset < info.num_classes):
            raise ConfigError(
                f"{where}: key 'dataset.options.train_subset' must be an integer >= the number of "
                f"classes ({info.num_classes}), got {subset!r}"
            )
        return cls(pad_to, tuple(sorted(positives)), subset)

    def info(self, info: DatasetInfo) -> DatasetInfo:
        """The dataset's info as the models see it under these options."""
        changes: dict[str, Any] = {}
        if self.pad_to:
            changes["input_shape"] = (info.input_shape[0], self.pad_to, self.pad_to)
        if self.positive_classes:
            names = ", ".join(info.class_names[c] if info.class_names else str(c) for c in self.positive_classes)
            changes.update(num_classes=2, metric="f1", class_names=("rest", names), hierarchy=())
        return dataclasses.replace(info, **changes) if changes else info

    def apply(self, data: Dataset, split: str) -> Dataset:
        if not isinstance(data, TensorSplit):
            return _Transformed(data, self, split)
        images, targets = data.images, data.targets
        if split == "train":
            self._check_subset(len(targets))
        if self.train_subset and split == "train" and self.train_subset < len(targets):
            _, keep = stratified_holdout(targets.numpy(), int(self.train_subset), SUBSET_SEED)
            index = torch.from_numpy(np.sort(keep))
            images, targets = images[index], targets[index]
        images = self._pad(images, data.info)
        targets = self._relabel(targets)
        return TensorSplit(images, targets, self.info(data.info), split, data.transform)

    def _check_subset(self, available: int) -> None:
        if self.train_subset and self.train_subset > available:
            raise ConfigError(
                f"key 'dataset.options.train_subset' is {self.train_subset:,}, but the training "
                f"split has only {available:,} images"
            )

    def _pad(self, images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
        if not self.pad_to:
            return images
        h, w = images.shape[-2:]
        top, left = (self.pad_to - h) // 2, (self.pad_to - w) // 2
        pads = (left, self.pad_to - w - left, top, self.pad_to - h - top)
        # Pad with black in pixel space: after normalization that is -mean/std per channel.
        black = [(-m / s) for m, s in zip(info.mean, info.std, strict=True)] if info.mean else [0.0] * images.shape[-3]
        channels = [F.pad(images[..., c : c + 1, :, :], pads, value=black[c]) for c in range(images.shape[-3])]
        return torch.cat(channels, dim=-3)

    def _relabel(self, targets: torch.Tensor) -> torch.Tensor:
        if not self.positive_classes:
            return targets
        return torch.isin(targets, torch.tensor(self.positive_classes)).long()


class _Transformed(Dataset):
    """Options applied per sample, for file-backed datasets."""

    def __init__(self, data: Dataset, options: DatasetOptions, split: str):
        self.data, self.options, self.split = data, options, split
        base_info = getattr(data, "info", None)
        self.info = options.info(base_info) if base_info is not None else None
        self.index = list(range(len(data)))  # type: ignore[arg-type]
        if split == "train":
            options._check_subset(len(self.index))
        if options.train_subset and split == "train" and options.train_subset < len(self.index):
            rng = np.random.default_rng(SUBSET_SEED)
            self.index = sorted(rng.choice(len(self.index), options.train_subset, replace=False).tolist())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.data[self.index[i]]
        if self.options.pad_to and getattr(self.data, "info", None) is not None:
            image = self.options._pad(image[None], self.data.info)[0]
        if self.options.positive_classes:
            label = int(label in self.options.positive_classes)
        return image, label


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
