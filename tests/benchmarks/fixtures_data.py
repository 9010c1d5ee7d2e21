"""Builders of tiny dataset copies in each dataset's real on-disk format.

Every builder writes files the way the real release lays them out (CIFAR python pickles as
Python 2's cPickle wrote them, gzipped IDX, an ImageFolder tree of JPEGs, an LFW folder) so
the tests run the real locate / prepare / verify / load code. Since a tiny copy cannot match
the published checksums and sizes, each builder also writes a *fixture recipe*: the
checked-in recipe with the copy's own checksums and smaller counts, and nothing else changed.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from benchmarks.data.idx import write_idx
from benchmarks.data.manifest import Manifest, load_manifest, manifest_path

CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

ILSVRC10_WNIDS = (
    "n01440764", "n02102040", "n02123045", "n02504458", "n02690373",
    "n03000684", "n03394916", "n03417042", "n03445777", "n04285008",
)


# --- recipes -------------------------------------------------------------------------------
def fixture_recipe(
    name: str,
    folder: Path,
    source_files: dict[str, dict[str, str]] | None = None,
    **extra: Any,
) -> Manifest:
    """The checked-in recipe of `name` with other checksums / parameters, written and reloaded."""
    recipe = load_manifest(manifest_path(name))
    if source_files is not None:
        recipe.source_files = source_files
    recipe.extra.update(extra)
    path = Path(folder) / "recipes" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    recipe.write(path)
    return load_manifest(path)


def md5_records(folder: Path, names: list[str]) -> dict[str, dict[str, str]]:
    return {
        n: {"algorithm": "md5", "digest": hashlib.md5((folder / n).read_bytes()).hexdigest()}
        for n in names
    }


# --- CIFAR: Python 2 cPickle, protocol 2 ---------------------------------------------------
class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit old opcodes
    """Writes pickles as Python 2's cPickle did: str as (SHORT_)BINSTRING, numpy.core globals."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or pickle.whichmodule(obj, name)
        module = module.replace("numpy._core", "numpy.core")  # the numpy 1 name in the files
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def write_py2_pickle(obj: Any, path: Path) -> Path:
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)
    return path


def _cifar_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    # Class-dependent brightness so a test can tell the images apart; uint8 N×3072.
    base = (labels.astype(np.int64) * 37 % 200)[:, None]
    noise = rng.integers(0, 56, size=(len(labels), 3072))
    return (base + noise).astype(np.uint8)


def make_cifar(
    root: Path, name: str = "cifar10", train_per_class: int = 12, test_per_class: int = 3, seed: int = 0
) -> tuple[Path, Manifest]:
    """A tiny CIFAR-10 (or -100) in torchvision's layout under `root/<name>/`; and its recipe."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    train_labels = rng.permutation(np.repeat(np.arange(num_classes), train_per_class))
    test_labels = rng.permutation(np.repeat(np.arange(num_classes), test_per_class))
    train_images = _cifar_images(rng, train_labels)
    test_images = _cifar_images(rng, test_labels)
    if name == "cifar10":
        raw = Path(root) / "cifar10" / "cifar-10-batches-py"
        raw.mkdir(parents=True)
        names = []
        for i, (x, y) in enumerate(zip(np.array_split(train_images, 5), np.array_split(train_labels, 5), strict=True), 1):
            write_py2_pickle(_cifar10_batch(f"training batch {i} of 5", x, y), raw / f"data_batch_{i}")
            names.append(f"data_batch_{i}")
        write_py2_pickle(_cifar10_batch("testing batch 1 of 1", test_images, test_labels), raw / "test_batch")
        write_py2_pickle(
            {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": len(train_labels) // 5, b"num_vis": 3072},
            raw / "batches.meta",
        )
        files = [*names, "test_batch", "batches.meta"]
    else:
        raw = Path(root) / "cifar100" / "cifar-100-python"
        raw.mkdir(parents=True)
        write_py2_pickle(_cifar100_batch("training batch 1 of 1", train_images, train_labels), raw / "train")
        write_py2_pickle(_cifar100_batch("testing batch 1 of 1", test_images, test_labels), raw / "test")
        write_py2_pickle(
            {
                b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                b"coarse_label_names": [c.encode() for c in CIFAR100_SUPERCLASSES],
            },
            raw / "meta",
        )
        files = ["train", "test", "meta"]
    val_count = num_classes * max(train_per_class // 6, 1)
    recipe = fixture_recipe(
        name,
        Path(root),
        source_files=md5_records(raw, files),
        val_count=val_count,
        split_counts={
            "train": len(train_labels) - val_count,
            "val": val_count,
            "test": len(test_labels),
        },
    )
    return raw, recipe


def _cifar10_batch(label: str, x: np.ndarray, y: np.ndarray) -> dict[bytes, Any]:
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in y],
        b"data": x,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(y))],
    }


def _cifar100_batch(label: str, x: np.ndarray, y: np.ndarray) -> dict[bytes, Any]:
    return {
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(y))],
        b"batch_label": label.encode(),
        b"fine_labels": [int(v) for v in y],
        b"coarse_labels": [int(v) // 5 for v in y],
        b"data": x,
    }


# --- Fashion-MNIST: gzipped IDX -------------------------------------------------------------
def make_fashion_mnist(root: Path, train_per_class: int = 24, test_per_class: int = 4, seed: int = 0) -> Path:
    """The four *-ubyte.gz files of a tiny Fashion-MNIST under `root/fashion-mnist/`."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "fashion-mnist"
    folder.mkdir(parents=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


# --- ImageNet: an ImageFolder tree of JPEGs ---------------------------------------------------
def _write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int], level: int) -> None:
    from PIL import Image

    pixels = np.clip(level + rng.integers(-30, 30, size=(size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG", quality=90)


def make_image_folder(
    root: Path,
    wnids: tuple[str, ...] = (*ILSVRC10_WNIDS, "n09999999"),
    train_per_class: int = 5,
    val_per_class: int = 2,
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> Path:
    """`root/imagenet/{train,val}/<wnid>/*.JPEG` with small random JPEGs (ILSVRC2012 names)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenet"
    serial = 0
    for c, wnid in enumerate(wnids):
        (folder / "train" / wnid).mkdir(parents=True)
        (folder / "val" / wnid).mkdir(parents=True)
        for k in range(train_per_class):
            _write_jpeg(folder / "train" / wnid / f"{wnid}_{k + 1}.JPEG", rng, size, 20 * c % 256)
        for _ in range(val_per_class):
            serial += 1
            _write_jpeg(folder / "val" / wnid / f"ILSVRC2012_val_{serial:08d}.JPEG", rng, size, 20 * c % 256)
    return folder


def imagenet_recipe(root: Path, num_classes: int, train_per_class: int, val_per_class: int) -> Manifest:
    return fixture_recipe(
        "imagenet",
        Path(root),
        num_classes=num_classes,
        val_per_class=1,
        split_counts={
            "train": num_classes * (train_per_class - 1),
            "val": num_classes,
            "test": num_classes * val_per_class,
        },
    )


def ilsvrc10_recipe(root: Path, train: int = 2, val: int = 1, test: int = 1) -> Manifest:
    return fixture_recipe(
        "ilsvrc10",
        Path(root),
        per_class={"train": train, "val": val, "test": test},
        split_counts={"train": 10 * train, "val": 10 * val, "test": 10 * test},
    )


# --- LFW: <person>/<person>_NNNN.jpg, 250×250 -------------------------------------------------
def make_lfw(root: Path, images_per_person: tuple[int, ...] = (3, 1, 2, 1, 4, 1), seed: int = 0) -> Path:
    """A tiny LFW folder `root/lfw/` with 250×250 JPEGs (a bright square where the face is)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / "lfw"
    for p, count in enumerate(images_per_person):
        person = f"Person_{chr(ord('A') + p)}"
        (folder / person).mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 120, size=(250, 250, 3))
            pixels[65:185, 65:185] += 120  # a "face" where LFW centres it
            Image.fromarray(pixels.astype(np.uint8)).save(folder / person / f"{person}_{k + 1:04d}.jpg", quality=90)
    return folder


def lfw_b_recipe(root: Path, n_images: int, backgrounds: int = 3, val_images: int = 2, test_images: int = 3) -> Manifest:
    per = 1 + backgrounds
    return fixture_recipe(
        "lfw-b",
        Path(root),
        backgrounds_per_image=backgrounds,
        val_images=val_images,
        test_images=test_images,
        split_counts={
            "train": (n_images - val_images - test_images) * per,
            "val": val_images * per,
            "test": test_images * per,
        },
        split_sha256={},
    )


def use_source(monkeypatch, source) -> None:
    """Register `source` (built with a fixture recipe) under its name for this test only."""
    from benchmarks.data import base

    monkeypatch.setitem(base._SOURCES, source.name, source)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `dynbench ARGS` in-process, as the console script does: (exit status, stdout, stderr)."""
    from benchmarks.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
