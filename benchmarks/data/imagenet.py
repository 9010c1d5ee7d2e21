"""ImageNet (ILSVRC2012) and ILSVRC-10 from an ImageFolder tree the user has.

The tree is the usual one: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the validation
images sorted into class folders), found as `<data root>/imagenet` or `<data root>/ILSVRC2012`.
ImageNet cannot be downloaded automatically (it needs an account at image-net.org).

`imagenet` splits: `test` is the official validation set (50,000 images); `val` is 10 images
per class held out of the official training set (seed 0; 10,000 images); `train` is the rest
(1,271,167). `ilsvrc10` (D2NN, Liu & Deng 2018): 10 classes fixed in the checked-in recipe,
with 500 train / 50 val / 150 test images per class, all drawn from the ImageNet *training*
set (seeded, per class), and a 2-level class hierarchy (`dataset_info("ilsvrc10").hierarchy`).

`dynbench data prepare imagenet` writes the file lists (relative paths and sizes) and the index
lists to `<data root>/imagenet/manifest.json`. Loading checks the sha256 of each sorted file
list with the files' current sizes (one `stat` per file, no image is read); `verify --full`
also scans the tree again and rebuilds the splits. Images are decoded lazily, one per item.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from benchmarks.data.base import DatasetInfo, FileCheck, register_dataset
from benchmarks.data.manifest import Manifest, SplitEntry, load_manifest, manifest_path
from benchmarks.data.prepared import PreparedSource, per_class_parts
from benchmarks.errors import ConfigError, DataNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: sha256 of the UTF-8 text "<relative path>\t<size in bytes>\n" per file, in sorted order
FILELIST_ALGORITHM = "filelist-sha256"


def eval_transform(
    size: int = 224, resize: int = 256, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable:
    """torchvision's standard ImageNet evaluation transform (resize 256, center crop 224)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def train_transform(
    size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable:
    """The standard ImageNet training augmentation (random-resized crop, horizontal flip)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class ImageFileDataset(Dataset):
    """Images decoded from files on demand: `(transform(image), label)` per item.

    `files` are paths relative to `root`; `targets` their class indices. Set `.transform`
    (e.g. to `train_transform()`) to change the preprocessing.
    """

    def __init__(
        self,
        root: Path,
        files: list[str],
        targets: list[int],
        info: DatasetInfo,
        split: str,
        transform: Callable | None = None,
    ):
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        self.root, self.files, self.info, self.split = Path(root), files, info, split
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.root / self.files[index]) as img:
            image = img.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan_pool(raw: Path, pool: str, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """'<pool>/<class>/<file>' of every image in the class folders, sorted, and their sizes."""
    files, sizes = [], []
    for cls in tqdm(classes, desc=f"scanning {pool}/", unit="class", disable=None, leave=False):
        folder = raw / pool / cls
        if not folder.is_dir():
            raise DataNotFoundError(f"class folder {folder} is missing")
        with os.scandir(folder) as it:
            entries = sorted(
                (e.name, e.stat().st_size)
                for e in it
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        for name, size in entries:
            files.append(f"{pool}/{cls}/{name}")
            sizes.append(size)
    return files, sizes


def filelist_digest(files: Sequence[str], sizes: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for name, size in zip(files, sizes, strict=True):
        digest.update(f"{name}\t{size}\n".encode())
    return digest.hexdigest()


class _ImageFolderSource(PreparedSource):
    """Shared by imagenet and ilsvrc10: pools are sorted file lists of an ImageFolder tree."""

    raw_subdirs = ("imagenet", "ILSVRC2012")

    def pool_record(self, files: list[str], sizes: list[int]) -> dict[str, str]:
        return {"algorithm": FILELIST_ALGORITHM, "digest": filelist_digest(files, sizes)}

    def file_checks(self, folder: Path, manifest: Manifest) -> list[FileCheck]:
        raw = self.source_folder(folder, manifest)
        pools = manifest.extra.get("pools") or {}
        checks = []
        for key, record in manifest.source_files.items():
            pool = key.rstrip("/")
            if pool not in pools:
                raise ConfigError(f"split manifest {manifest.path}: no file list for '{key}'")
            checks.append(self._check_pool(raw, key, pools[pool], record, manifest.path))
        return checks

    def _check_pool(
        self, raw: Path, key: str, pool: dict[str, list], record: dict[str, str], where: Path | None
    ) -> FileCheck:
        files, listed = pool["files"], pool["sizes"]
        root = str(raw)
        sizes, missing, changed = [], [], []
        for name, size in zip(files, listed, strict=True):
            if name.startswith(("/", "\\")) or ".." in name.split("/"):
                raise ConfigError(f"split manifest {where}: path '{name}' leaves {raw}")
            try:
                actual = os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                missing.append(name)
                continue
            if actual != size and len(changed) < 3:
                changed.append(f"{name} has {actual} bytes, the manifest lists {size}")
            sizes.append(actual)
        path = raw / pool_name(key)
        if missing:
            hint = (
                f"{len(missing)} of the {len(files)} listed files are missing, e.g. "
                f"{', '.join(missing[:3])}. Restore them or run `dynbench data prepare {self.name}` again."
            )
            return FileCheck(key, path, FILELIST_ALGORITHM, record["digest"], None, hint)
        hint = (
            "; ".join(changed) + ". " if changed else ""
        ) + f"Restore the files or run `dynbench data prepare {self.name}` again."
        actual = filelist_digest(files, sizes)
        return FileCheck(key, path, FILELIST_ALGORITHM, record["digest"], actual, hint)

    def make_dataset(
        self, folder: Path, manifest: Manifest, split: str, classes: Sequence[str]
    ) -> ImageFileDataset:
        entry = manifest.splits[split]
        pool = manifest.extra["pools"][entry.pool]["files"]
        index = {wnid: i for i, wnid in enumerate(classes)}
        files = [pool[i] for i in entry.indices]
        targets = [index[f.split("/")[1]] for f in files]
        return ImageFileDataset(
            self.source_folder(folder, manifest), files, targets, self.info, split, eval_transform()
        )


def pool_name(key: str) -> str:
    return key.rstrip("/")


@register_dataset
class ImageNet(_ImageFolderSource):
    info = DatasetInfo(
        name="imagenet",
        num_classes=1000,
        input_shape=(3, 224, 224),
        description="ImageNet ILSVRC2012 classification, 1000 classes (ImageFolder tree, decoded lazily)",
        how_to_get=(
            "ImageNet needs an account at https://image-net.org (no automatic download). Put the\n"
            "ILSVRC2012 tree as <data-root>/imagenet/train/<wnid>/*.JPEG and\n"
            "<data-root>/imagenet/val/<wnid>/*.JPEG (validation images sorted into class folders),\n"
            "then run `dynbench data prepare imagenet`."
        ),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )

    def is_raw_present(self, folder: Path) -> bool:
        return (folder / "train").is_dir() and (folder / "val").is_dir()

    def build_manifest(self, folder: Path) -> Manifest:
        classes = class_folders(folder / "train")
        expected = int(self.recipe_param("num_classes"))
        if len(classes) != expected:
            raise DataNotFoundError(
                f"{folder / 'train'} has {len(classes)} class folders; ImageNet has {expected}"
            )
        val_classes = class_folders(folder / "val")
        if val_classes != classes:
            raise DataNotFoundError(
                f"{folder / 'val'} must hold the same class folders as train/ "
                f"(val/<wnid>/*.JPEG); it has {len(val_classes)} folders. A flat val/ folder "
                "must first be sorted into class folders."
            )
        train_files, train_sizes = scan_pool(folder, "train", classes)
        val_files, val_sizes = scan_pool(folder, "val", classes)
        index = {wnid: i for i, wnid in enumerate(classes)}
        labels = np.array([index[f.split("/")[1]] for f in train_files], dtype=np.int64)
        per_class = int(self.recipe_param("val_per_class"))
        (val,) = per_class_parts(labels, [per_class], self.recipe().seed, len(classes))
        train = np.setdiff1d(np.arange(len(train_files)), val)
        return self.new_manifest(
            splits={
                "train": SplitEntry.build("train", train),
                "val": SplitEntry.build("train", val),
                "test": SplitEntry.build("val", np.arange(len(val_files))),
            },
            source_files={
                "train/": self.pool_record(train_files, train_sizes),
                "val/": self.pool_record(val_files, val_sizes),
            },
            extra={
                "classes": classes,
                "pools": {
                    "train": {"files": train_files, "sizes": train_sizes},
                    "val": {"files": val_files, "sizes": val_sizes},
                },
            },
        )

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> ImageFileDataset:
        return self.make_dataset(folder, manifest, split, manifest.extra["classes"])


def _ilsvrc10_info() -> DatasetInfo:
    """Class names and hierarchy come from the checked-in recipe, the single definition."""
    recipe = load_manifest(manifest_path("ilsvrc10"))
    classes = recipe.extra["classes"]
    wnids = [c["wnid"] for c in classes]
    hierarchy = tuple(
        (group["name"], tuple(wnids.index(w) for w in group["wnids"]))
        for group in recipe.extra["hierarchy"]
    )
    return DatasetInfo(
        name="ilsvrc10",
        num_classes=len(classes),
        input_shape=(3, 224, 224),
        description=(
            "ILSVRC-10 (D2NN): 10 ImageNet classes, 500/50/150 train/val/test images per class "
            "from the ImageNet training set, with a 2-level class hierarchy"
        ),
        how_to_get=(
            "ILSVRC-10 is drawn from the ImageNet training set: put ImageNet as\n"
            "<data-root>/imagenet/train/<wnid>/*.JPEG (see `imagenet`; only the 10 class folders\n"
            "listed in benchmarks/data/manifests/ilsvrc10.json are needed) and run\n"
            "`dynbench data prepare ilsvrc10`."
        ),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=tuple(c["name"] for c in classes),
        hierarchy=hierarchy,
    )


@register_dataset
class ILSVRC10(_ImageFolderSource):
    info = _ilsvrc10_info()
    raw_subdirs = ("imagenet", "ILSVRC2012", "ilsvrc10")

    def wnids(self) -> list[str]:
        return [c["wnid"] for c in self.recipe_param("classes")]

    def is_raw_present(self, folder: Path) -> bool:
        return all((folder / "train" / w).is_dir() for w in self.wnids())

    def build_manifest(self, folder: Path) -> Manifest:
        wnids = self.wnids()
        files, sizes = scan_pool(folder, "train", wnids)
        index = {wnid: i for i, wnid in enumerate(wnids)}
        labels = np.array([index[f.split("/")[1]] for f in files], dtype=np.int64)
        per_class = self.recipe_param("per_class")
        counts = [int(per_class[s]) for s in ("train", "val", "test")]
        train, val, test = per_class_parts(labels, counts, self.recipe().seed, len(wnids))
        return self.new_manifest(
            splits={
                "train": SplitEntry.build("train", train),
                "val": SplitEntry.build("train", val),
                "test": SplitEntry.build("train", test),
            },
            source_files={"train/": self.pool_record(files, sizes)},
            extra={"classes": wnids, "pools": {"train": {"files": files, "sizes": sizes}}},
        )

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> ImageFileDataset:
        return self.make_dataset(folder, manifest, split, self.wnids())
