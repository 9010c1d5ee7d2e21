"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in torchvision's on-disk format.

The files are the "python version" batches as the CIFAR site and torchvision distribute them:
`cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) and `cifar-100-python/`
(train, test, meta). They are Python pickles of dicts holding a numpy uint8 array `b'data'`
(N×3072, the red, green and blue 32×32 planes in turn) and label lists (`b'labels'`, or
`b'fine_labels'` for CIFAR-100). They are read with an unpickler that can build nothing but
numpy arrays, after their md5 has been checked against torchvision's published values.

Splits: `test` is the official test set (10,000 images, in file order); `val` is a stratified
5,000 held out of the official 50,000 training images (seed 0; 500 per class for CIFAR-10, 50
for CIFAR-100); `train` is the other 45,000. The checked-in manifest is a recipe (see
`benchmarks.data.prepared`); `dynbench data prepare cifar10` writes the index lists to
`<data root>/cifar10/manifest.json`, and every load rebuilds them from the labels and checks
they are unchanged.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.data.base import DatasetInfo, TensorSplit, register_dataset
from benchmarks.data.manifest import Manifest, SplitEntry, stratified_holdout
from benchmarks.data.prepared import PreparedSource
from benchmarks.errors import DataNotFoundError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals a CIFAR batch pickle refers to (written by Python 2's cPickle with numpy 1).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global '{module}.{name}': a CIFAR batch holds only numpy arrays"
            ) from None


def read_cifar_pickle(path: str | Path) -> dict[bytes, Any]:
    """Read one CIFAR python batch (keys stay bytes, as the standard unpickler with encoding="bytes" gives them)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataNotFoundError(f"{path} is not a CIFAR python batch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{path} is not a CIFAR python batch file: it holds a {type(obj).__name__}")
    return obj


class _Cifar(PreparedSource):
    base_folder: str
    pools: dict[str, tuple[str, ...]]
    meta_file: str
    label_key: bytes
    rederive_on_load = True  # the labels are read anyway; rebuilding the split costs milliseconds

    def is_raw_present(self, folder: Path) -> bool:
        return folder.is_dir() and all(p.is_file() for p in self.raw_files(folder).values())

    def raw_files(self, raw: Path) -> dict[str, Path]:
        names = [n for files in self.pools.values() for n in files] + [self.meta_file]
        return {n: raw / n for n in names}

    def read_pool(self, raw: Path, pool: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images N×3×32×32 and int64 labels N of one pool ('train' or 'test')."""
        images, labels = [], []
        for name in self.pools[pool]:
            path = raw / name
            batch = read_cifar_pickle(path)
            try:
                data, batch_labels = batch[b"data"], batch[self.label_key]
            except KeyError as exc:
                raise DataNotFoundError(f"{path} has no {exc} entry; is it a {self.name} file?") from None
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataNotFoundError(f"{path}: b'data' is not a uint8 N×3072 array")
            if len(batch_labels) != len(data):
                raise DataNotFoundError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch_labels, dtype=np.int64))
        y = np.concatenate(labels)
        if y.size and (y.min() < 0 or y.max() >= self.info.num_classes):
            raise DataNotFoundError(f"{raw}: labels outside 0..{self.info.num_classes - 1}")
        return np.concatenate(images), y

    def read_class_names(self, raw: Path) -> list[str]:
        key = b"label_names" if self.name == "cifar10" else b"fine_label_names"
        meta = read_cifar_pickle(raw / self.meta_file)
        return [n.decode("ascii") if isinstance(n, bytes) else str(n) for n in meta.get(key, [])]

    def build_manifest(self, folder: Path) -> Manifest:
        names = self.read_class_names(folder)
        if names != list(self.info.class_names):
            raise DataNotFoundError(
                f"{folder / self.meta_file} names the classes {names[:5]}..., not {self.name}'s "
                f"{list(self.info.class_names[:5])}...; is this the right folder?"
            )
        _, labels = self.read_pool(folder, "train")
        _, test_labels = self.read_pool(folder, "test")
        train, val = stratified_holdout(labels, int(self.recipe_param("val_count")), self.recipe().seed)
        return self.new_manifest(
            splits={
                "train": SplitEntry.build("train", train),
                "val": SplitEntry.build("train", val),
                "test": SplitEntry.build("test", np.arange(len(test_labels))),
            },
            source_files=dict(self.recipe().source_files),
        )

    def load_split(self, folder: Path, manifest: Manifest, split: str) -> TensorSplit:
        entry = manifest.splits[split]
        images, labels = self.read_pool(self.source_folder(folder, manifest), entry.pool)
        idx = np.asarray(entry.indices, dtype=np.int64)
        x = torch.from_numpy(images[idx]).float().div_(255.0)
        mean = torch.tensor(self.info.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.info.std).view(1, 3, 1, 1)
        return TensorSplit((x - mean) / std, torch.from_numpy(labels[idx]), self.info, split)

    def download(self, workdir: Path) -> None:
        import torchvision.datasets

        cls = torchvision.datasets.CIFAR10 if self.name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(workdir), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataNotFoundError(
                f"could not download {self.name} into {workdir} ({exc}).\n{self.info.how_to_get}"
            ) from exc


def _how_to_get(name: str, folder: str) -> str:
    return (
        "Get it with one of:\n"
        f"  dynbench data prepare {name}          (torchvision download, needs the network)\n"
        f"  put torchvision's {folder}/ folder in <data-root>/{name}/ and run "
        f"`dynbench data prepare {name} --no-download`"
    )


@register_dataset
class Cifar10(_Cifar):
    info = DatasetInfo(
        name="cifar10",
        num_classes=10,
        input_shape=(3, 32, 32),
        description="CIFAR-10: 32x32 colour images, 10 classes (torchvision python batches)",
        how_to_get=_how_to_get("cifar10", "cifar-10-batches-py"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        class_names=CIFAR10_CLASSES,
        # D2NN's hierarchical stand-in: vehicles vs animals.
        hierarchy=(("vehicle", (0, 1, 8, 9)), ("animal", (2, 3, 4, 5, 6, 7))),
    )
    base_folder = "cifar-10-batches-py"
    pools = {
        "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test": ("test_batch",),
    }
    meta_file = "batches.meta"
    label_key = b"labels"
    raw_subdirs = ("cifar10/cifar-10-batches-py", "cifar-10-batches-py")


@register_dataset
class Cifar100(_Cifar):
    info = DatasetInfo(
        name="cifar100",
        num_classes=100,
        input_shape=(3, 32, 32),
        description="CIFAR-100: 32x32 colour images, 100 fine classes (torchvision python files)",
        how_to_get=_how_to_get("cifar100", "cifar-100-python"),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        class_names=CIFAR100_CLASSES,
    )
    base_folder = "cifar-100-python"
    pools = {"train": ("train",), "test": ("test",)}
    meta_file = "meta"
    label_key = b"fine_labels"
    raw_subdirs = ("cifar100/cifar-100-python", "cifar-100-python")
