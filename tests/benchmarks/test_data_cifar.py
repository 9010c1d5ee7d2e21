"""CIFAR-10/100: real python-pickle files (tiny), prepared manifests, verification."""

from __future__ import annotations

import json
import pickle
import pickletools
import re

import numpy as np
import pytest
import torch

from benchmarks.data import dataset_info, get_source, load_split
from benchmarks.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    Cifar10,
    Cifar100,
    read_cifar_pickle,
)
from benchmarks.data.manifest import index_list_sha256, load_manifest, manifest_path
from benchmarks.data.prepared import recipe_sha256
from benchmarks.errors import DataNotFoundError, ManifestMismatchError
from tests.benchmarks.fixtures_data import fixture_recipe, make_cifar, use_source


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    raw, recipe = make_cifar(tmp_path)
    source = Cifar10(recipe=recipe)
    use_source(monkeypatch, source)
    return tmp_path, raw, source


def test_recipes_hold_torchvisions_published_md5s():
    import torchvision.datasets as tvd

    for name, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        recipe = load_manifest(manifest_path(name))
        published = {f: md5 for f, md5 in cls.train_list + cls.test_list}
        published[cls.meta["filename"]] = cls.meta["md5"]
        assert {k: v["digest"] for k, v in recipe.source_files.items()} == published
        assert {v["algorithm"] for v in recipe.source_files.values()} == {"md5"}
        assert recipe.splits == {}  # a recipe: index lists are made by `prepare`
        assert recipe.extra["split_counts"] == {"train": 45000, "val": 5000, "test": 10000}
        assert recipe.extra["val_count"] == 5000


def test_class_names_and_hierarchy():
    assert len(set(CIFAR100_CLASSES)) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    info = dataset_info("cifar10")
    assert info.class_names == CIFAR10_CLASSES
    members = sorted(i for _, group in info.hierarchy for i in group)
    assert members == list(range(10))
    vehicles = dict(info.hierarchy)["vehicle"]
    assert [CIFAR10_CLASSES[i] for i in vehicles] == ["airplane", "automobile", "ship", "truck"]


def test_fixture_files_are_python2_cpickle_format(cifar10):
    _, raw, _ = cifar10
    blob = (raw / "data_batch_1").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]
    assert ops[0] == ("PROTO", 2)
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert not any(name in ("BINUNICODE", "SHORT_BINUNICODE", "BINBYTES") for name, _ in ops)
    # what the CIFAR page tells Python 3 users to do, and what torchvision does
    assert set(pickle.loads(blob, encoding="bytes")) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert "labels" in pickle.loads(blob, encoding="latin1")


def test_prepare_writes_deterministic_stratified_manifest(cifar10, tmp_path):
    root, raw, source = cifar10
    folder = source.prepare(root, download=False)
    assert folder == root / "cifar10"
    first = (folder / "manifest.json").read_bytes()
    manifest = load_manifest(folder / "manifest.json")
    assert manifest.extra["source_folder"] == "cifar-10-batches-py"
    assert manifest.extra["recipe_sha256"] == recipe_sha256(source.recipe())
    source.prepare(root, download=False)
    assert (folder / "manifest.json").read_bytes() == first

    train, val, test = (manifest.splits[s] for s in ("train", "val", "test"))
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(train.indices + val.indices) == list(range(120))
    assert test.indices == list(range(30)) and test.pool == "test"
    _, labels = source.read_pool(raw, "train")
    assert np.bincount(labels[val.indices], minlength=10).tolist() == [2] * 10


def test_load_split_matches_torchvision_reading_the_same_files(cifar10, monkeypatch):
    import torchvision.datasets as tvd

    root, raw, source = cifar10
    source.prepare(root, download=False)
    test = load_split("cifar10", "test", data_root=root)
    assert test.images.shape == (30, 3, 32, 32) and test.images.dtype == torch.float32

    # torchvision checks its published md5s; point them at the fixture files.
    records = source.recipe().source_files
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", records[f"data_batch_{i}"]["digest"]] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", records["test_batch"]["digest"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": records["batches.meta"]["digest"]})
    reference = tvd.CIFAR10(str(raw.parent), train=False)
    assert reference.classes == list(CIFAR10_CLASSES)
    assert test.targets.tolist() == reference.targets
    mean = torch.tensor(source.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(source.info.std).view(1, 3, 1, 1)
    pixels = (test.images * std + mean) * 255
    expected = torch.from_numpy(reference.data).permute(0, 3, 1, 2).float()
    assert torch.allclose(pixels, expected, atol=1e-3)

    val = load_split("cifar10", "val", data_root=root)
    assert len(val) == 20 and val[0][0].shape == (3, 32, 32)


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    raw, recipe = make_cifar(tmp_path, "cifar100", train_per_class=2, test_per_class=1)
    source = Cifar100(recipe=recipe)
    use_source(monkeypatch, source)
    source.prepare(tmp_path, download=False)
    val = load_split("cifar100", "val", data_root=tmp_path)
    assert sorted(val.targets.tolist()) == list(range(100))  # one per class
    train = load_split("cifar100", "train", data_root=tmp_path)
    assert len(train) == 100
    assert read_cifar_pickle(raw / "meta")[b"fine_label_names"][:2] == [b"apple", b"aquarium_fish"]


def test_unpickler_refuses_anything_but_numpy(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Exploit()}, protocol=4))
    with pytest.raises(DataNotFoundError, match=r"refusing global 'builtins\.print'"):
        read_cifar_pickle(path)


def test_tampered_source_file_names_file_and_both_md5s(cifar10):
    root, raw, source = cifar10
    source.prepare(root, download=False)
    path = raw / "data_batch_2"
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    expected = source.recipe().source_files["data_batch_2"]["digest"]
    import hashlib

    actual = hashlib.md5(bytes(blob)).hexdigest()
    with pytest.raises(ManifestMismatchError) as err:
        load_split("cifar10", "train", data_root=root)
    message = str(err.value)
    assert str(path) in message and expected in message and actual in message


def test_tampered_index_list_names_manifest_and_both_hashes(cifar10):
    root, _, source = cifar10
    folder = source.prepare(root, download=False)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    recorded = data["splits"]["val"]["sha256"]
    data["splits"]["val"]["indices"][0] += 1
    actual = index_list_sha256(data["splits"]["val"]["indices"])
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestMismatchError) as err:
        load_split("cifar10", "val", data_root=root)
    message = str(err.value)
    assert str(path) in message and recorded in message and actual in message


def test_consistently_edited_split_is_caught_by_rebuilding(cifar10):
    """Editing a list *and* its hash still fails: every load rebuilds CIFAR's split."""
    root, _, source = cifar10
    folder = source.prepare(root, download=False)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    train, val = data["splits"]["train"], data["splits"]["val"]
    train["indices"][0], val["indices"][0] = val["indices"][0], train["indices"][0]
    for entry in (train, val):
        entry["indices"].sort()
        entry["sha256"] = index_list_sha256(entry["indices"])
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestMismatchError, match=r"rebuilding it from the source files") as err:
        load_split("cifar10", "test", data_root=root)
    assert re.search(r"split '(train|val)'", str(err.value))


def test_recipe_change_requires_explicit_prepare(cifar10, monkeypatch):
    root, raw, source = cifar10
    source.prepare(root, download=False)
    changed = fixture_recipe("cifar10", root / "changed", source_files=source.recipe().source_files,
                             val_count=30, split_counts={"train": 90, "val": 30, "test": 30})
    other = Cifar10(recipe=changed)
    use_source(monkeypatch, other)
    with pytest.raises(ManifestMismatchError, match="prepared from a recipe with sha256") as err:
        load_split("cifar10", "val", data_root=root)
    assert recipe_sha256(changed) in str(err.value)
    other.prepare(root, download=False)
    assert len(load_split("cifar10", "val", data_root=root)) == 30


def test_copy_with_other_checksums_is_refused_before_preparing(tmp_path):
    make_cifar(tmp_path)
    real = get_source("cifar10")  # the checked-in recipe: torchvision's md5s
    with pytest.raises(ManifestMismatchError, match=r"has md5 [0-9a-f]{32}, but the manifest .*cifar10\.json records 5ff9c542aee3614f3951f8cda6e48888"):
        real.prepare(tmp_path, download=False)
    assert not (tmp_path / "cifar10" / "manifest.json").exists()


def test_missing_and_unprepared_data_say_where_and_how(tmp_path, cifar10, monkeypatch):
    empty = tmp_path / "empty"
    with pytest.raises(DataNotFoundError) as err:
        load_split("cifar10", "train", data_root=empty)
    message = str(err.value)
    assert str(empty / "cifar10" / "manifest.json") in message
    assert str(empty / "cifar10" / "cifar-10-batches-py") in message
    assert "dynbench data prepare cifar10" in message

    root, raw, source = cifar10
    with pytest.raises(DataNotFoundError, match=f"dynbench data prepare cifar10 --data-root {root}") as err:
        load_split("cifar10", "train", data_root=root)
    assert str(raw) in str(err.value)

    def no_network(workdir):
        raise AssertionError("--no-download must not download")

    monkeypatch.setattr(source, "download", no_network)
    with pytest.raises(DataNotFoundError, match="was not found"):
        source.prepare(empty, download=False)


def test_torchvision_layout_at_the_root_is_found(tmp_path, monkeypatch):
    raw, recipe = make_cifar(tmp_path / "build")
    (tmp_path / "root").mkdir()
    raw.rename(tmp_path / "root" / "cifar-10-batches-py")
    source = Cifar10(recipe=recipe)
    folder = source.prepare(tmp_path / "root", download=False)
    manifest = source.manifest(folder)
    assert manifest.extra["source_folder"] == str((tmp_path / "root" / "cifar-10-batches-py").resolve())
    assert len(source.load_split(folder, source.verify(folder), "train")) == 100


def test_prepare_downloads_through_torchvision_when_allowed(tmp_path, monkeypatch):
    import shutil

    import torchvision.datasets as tvd

    upstream, recipe = make_cifar(tmp_path / "upstream")
    calls = []

    class FakeCIFAR10:  # stands in for the network: writes what torchvision would extract
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            shutil.copytree(upstream, f"{root}/cifar-10-batches-py")

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    source = Cifar10(recipe=recipe)
    folder = source.prepare(tmp_path / "root")
    assert calls == [(str(tmp_path / "root" / "cifar10"), True)]
    assert source.manifest(folder).extra["source_folder"] == "cifar-10-batches-py"

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "CIFAR10", Offline)
    with pytest.raises(DataNotFoundError, match="could not download cifar10 .*network is unreachable"):
        source.prepare(tmp_path / "elsewhere")
