"""ImageNet and ILSVRC-10 from a tiny ImageFolder tree of real JPEGs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.data import dataset_info, load_split
from benchmarks.data.imagenet import ILSVRC10, ImageNet, filelist_digest, train_transform
from benchmarks.data.manifest import load_manifest, manifest_path
from benchmarks.errors import ConfigError, DataNotFoundError, ManifestMismatchError
from tests.benchmarks.fixtures_data import (
    ILSVRC10_WNIDS,
    ilsvrc10_recipe,
    imagenet_recipe,
    make_image_folder,
    use_source,
)

TRAIN, VAL = 5, 2  # images per class in the fixture tree (11 classes)


@pytest.fixture
def tree(tmp_path):
    return tmp_path, make_image_folder(tmp_path, train_per_class=TRAIN, val_per_class=VAL)


@pytest.fixture
def imagenet(tree, monkeypatch):
    root, folder = tree
    source = ImageNet(recipe=imagenet_recipe(root, 11, TRAIN, VAL))
    use_source(monkeypatch, source)
    return root, folder, source


def test_prepare_and_splits(imagenet):
    root, folder, source = imagenet
    workdir = source.prepare(root, download=False)
    assert workdir == folder  # <root>/imagenet holds the tree and its manifest
    manifest = load_manifest(workdir / "manifest.json")
    assert manifest.extra["source_folder"] == "."
    pools = manifest.extra["pools"]
    assert pools["train"]["files"][0] == f"train/{ILSVRC10_WNIDS[0]}/{ILSVRC10_WNIDS[0]}_1.JPEG"
    assert pools["train"]["files"] == sorted(pools["train"]["files"])
    assert manifest.source_files["train/"]["digest"] == filelist_digest(pools["train"]["files"], pools["train"]["sizes"])

    train, val, test = (manifest.splits[s] for s in ("train", "val", "test"))
    assert set(train.indices).isdisjoint(val.indices)
    assert len(train.indices) + len(val.indices) == 11 * TRAIN
    assert test.pool == "val" and test.indices == list(range(11 * VAL))
    val_classes = Counter(pools["train"]["files"][i].split("/")[1] for i in val.indices)
    assert set(val_classes.values()) == {1} and len(val_classes) == 11  # val_per_class = 1

    first = (workdir / "manifest.json").read_bytes()
    source.prepare(root, download=False)
    assert (workdir / "manifest.json").read_bytes() == first


def test_lazy_dataset_with_standard_transforms(imagenet):
    root, folder, source = imagenet
    source.prepare(root, download=False)
    test = load_split("imagenet", "test", data_root=root)
    assert len(test) == 11 * VAL
    image, label = test[3]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    classes = sorted({f.split("/")[1] for f in test.files})  # ImageFolder: sorted wnids
    assert label == classes.index(test.files[3].split("/")[1])
    test.transform = train_transform()
    assert test[0][0].shape == (3, 224, 224)


def test_missing_file_and_changed_file_are_reported(imagenet):
    root, folder, source = imagenet
    source.prepare(root, download=False)
    victim = folder / "val" / ILSVRC10_WNIDS[2] / "ILSVRC2012_val_00000005.JPEG"
    victim.write_bytes(victim.read_bytes() + b"\0")
    manifest = load_manifest(folder / "manifest.json")
    with pytest.raises(ManifestMismatchError) as err:
        load_split("imagenet", "test", data_root=root)
    message = str(err.value)
    assert manifest.source_files["val/"]["digest"] in message
    assert "val/n02123045/ILSVRC2012_val_00000005.JPEG has" in message
    victim.unlink()
    with pytest.raises(DataNotFoundError, match="ILSVRC2012_val_00000005.JPEG"):
        load_split("imagenet", "test", data_root=root)


def test_added_file_is_found_by_full_verify_only(imagenet):
    root, folder, source = imagenet
    workdir = source.prepare(root, download=False)
    extra = folder / "train" / ILSVRC10_WNIDS[0] / "extra.JPEG"
    extra.write_bytes((folder / "train" / ILSVRC10_WNIDS[0] / f"{ILSVRC10_WNIDS[0]}_1.JPEG").read_bytes())
    source.verify(workdir)  # the listed files are all intact
    with pytest.raises(ManifestMismatchError, match="rebuilding"):
        source.verify(workdir, full=True)


def test_paths_in_a_manifest_stay_inside_the_tree(imagenet):
    root, folder, source = imagenet
    source.prepare(root, download=False)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["extra"]["pools"]["val"]["files"][0] = "../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="leaves"):
        load_split("imagenet", "test", data_root=root)


def test_bad_trees_are_explained(tmp_path):
    folder = make_image_folder(tmp_path, wnids=("n01440764", "n02102040"), train_per_class=3, val_per_class=1)
    with pytest.raises(DataNotFoundError, match="has 2 class folders; ImageNet has 1000"):
        ImageNet().prepare(tmp_path, download=False)
    for wnid_dir in (folder / "val").iterdir():  # a flat val/ folder, as distributed
        for f in wnid_dir.iterdir():
            f.rename(folder / "val" / f.name)
        wnid_dir.rmdir()
    source = ImageNet(recipe=imagenet_recipe(tmp_path, 2, 3, 1))
    with pytest.raises(DataNotFoundError, match="sorted into class folders"):
        source.prepare(tmp_path, download=False)


def test_ilsvrc10_recipe_classes_and_hierarchy():
    recipe = load_manifest(manifest_path("ilsvrc10"))
    wnids = [c["wnid"] for c in recipe.extra["classes"]]
    assert tuple(wnids) == ILSVRC10_WNIDS and wnids == sorted(wnids)
    info = dataset_info("ilsvrc10")
    assert info.num_classes == 10 and info.class_names[0] == "tench"
    groups = dict(info.hierarchy)
    assert sorted(i for g in groups.values() for i in g) == list(range(10))
    assert [info.class_names[i] for i in groups["vehicle"]] == ["airliner", "garbage truck", "sports car"]
    assert recipe.extra["per_class"] == {"train": 500, "val": 50, "test": 150}
    timm_data = pytest.importorskip("timm.data")
    synsets = Path(timm_data.__file__).parent / "_info" / "imagenet_synsets.txt"
    if synsets.is_file():
        assert set(wnids) <= set(synsets.read_text().split())  # all are ILSVRC2012 classes


def test_ilsvrc10_draws_every_split_from_the_training_set(tree, monkeypatch):
    root, folder = tree
    source = ILSVRC10(recipe=ilsvrc10_recipe(root, train=2, val=1, test=1))
    use_source(monkeypatch, source)
    workdir = source.prepare(root, download=False)
    assert workdir == root / "ilsvrc10"
    manifest = load_manifest(workdir / "manifest.json")
    files = manifest.extra["pools"]["train"]["files"]
    assert all(f.startswith("train/") for f in files)
    assert not any("n09999999" in f for f in files)  # not one of the 10 classes
    assert {p for p in manifest.extra["pools"]} == {"train"}
    seen = set()
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
        entry = manifest.splits[split]
        assert entry.pool == "train"
        counts = Counter(files[i].split("/")[1] for i in entry.indices)
        assert set(counts.values()) == {per_class} and len(counts) == 10
        assert seen.isdisjoint(entry.indices)
        seen.update(entry.indices)
        data = load_split("ilsvrc10", split, data_root=root)
        assert sorted(data.targets.tolist()) == sorted(np.repeat(np.arange(10), per_class).tolist())
    image, label = load_split("ilsvrc10", "test", data_root=root)[0]
    assert image.shape == (3, 224, 224) and 0 <= label < 10
