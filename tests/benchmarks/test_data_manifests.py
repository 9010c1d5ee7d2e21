"""Checked-in manifests (digits, fashion-mnist): regeneration, tampering, split properties."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from benchmarks.data import get_source, load_split
from benchmarks.data.base import DatasetSource
from benchmarks.data.manifest import index_list_sha256, load_manifest, manifest_path
from benchmarks.errors import DataNotFoundError, ManifestMismatchError, UnknownNameError
from benchmarks.io import canonical_json, sha256_file
from tests.benchmarks.fixtures_data import make_fashion_mnist


def regenerated_bytes(source: DatasetSource) -> bytes:
    # The same serialization Manifest.write uses (atomic_write_json).
    manifest = source.build_manifest(source.locate())
    return (canonical_json(manifest.to_json(), indent=2) + "\n").encode()


def test_digits_manifest_regenerates_byte_identically():
    source = get_source("digits")
    assert regenerated_bytes(source) == manifest_path("digits").read_bytes()


@pytest.mark.fashion_mnist
def test_fashion_mnist_manifest_regenerates_byte_identically():
    source = get_source("fashion-mnist")
    assert str(source.locate()) == "/usr/share/datasets/fashion-mnist"
    assert regenerated_bytes(source) == manifest_path("fashion-mnist").read_bytes()


@pytest.mark.fashion_mnist
def test_fashion_mnist_splits_are_disjoint_and_stratified():
    manifest = load_manifest(manifest_path("fashion-mnist"))
    train, val, test = (manifest.splits[s] for s in ("train", "val", "test"))
    assert train.pool == val.pool == "train" and test.pool == "test"
    assert set(train.indices).isdisjoint(val.indices)
    assert len(train.indices) + len(val.indices) == 60000
    assert test.indices == list(range(10000))
    val_split = load_split("fashion-mnist", "val")
    assert np.bincount(val_split.targets.numpy(), minlength=10).tolist() == [500] * 10


def test_digits_splits_are_disjoint_and_stratified():
    manifest = get_source("digits").manifest()
    parts = [set(manifest.splits[s].indices) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 1797
    splits = {s: load_split("digits", s) for s in ("train", "val", "test")}
    for split in splits.values():
        share = np.bincount(split.targets.numpy(), minlength=10) / len(split)
        assert np.abs(share - 0.1).max() < 0.02  # digits has ~180 per class


def test_tampered_index_list_names_manifest_and_both_hashes(tmp_path):
    data = json.loads(manifest_path("digits").read_text())
    recorded = data["splits"]["test"]["sha256"]
    data["splits"]["test"]["indices"][3] = data["splits"]["train"]["indices"][0]
    actual = index_list_sha256(data["splits"]["test"]["indices"])
    path = tmp_path / "digits.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestMismatchError) as err:
        load_split("digits", "test", manifest=load_manifest(path))
    message = str(err.value)
    assert "split 'test'" in message and str(path) in message
    assert recorded in message and actual in message


def test_consistently_edited_manifest_fails_full_verify(tmp_path):
    """An edited list with a recomputed hash passes the hash check, not a rebuild."""
    data = json.loads(manifest_path("digits").read_text())
    test, train = data["splits"]["test"], data["splits"]["train"]
    test["indices"][0], train["indices"][0] = train["indices"][0], test["indices"][0]
    for entry in (test, train):
        entry["indices"].sort()
        entry["sha256"] = index_list_sha256(entry["indices"])
    path = tmp_path / "digits.json"
    path.write_text(json.dumps(data))
    source = get_source("digits")
    folder = source.locate()
    source.verify(folder, load_manifest(path))
    with pytest.raises(ManifestMismatchError, match="rebuilding it from the source files"):
        source.verify(folder, load_manifest(path), full=True)
    source.verify(folder, full=True)  # the checked-in manifest rebuilds exactly


def test_tampered_source_file_names_file_and_both_hashes(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    source = get_source("fashion-mnist")
    manifest = source.build_manifest(folder)
    val = load_split("fashion-mnist", "val", data_root=tmp_path, manifest=manifest)
    assert len(val) == 20 and np.bincount(val.targets.numpy()).tolist() == [2] * 10

    path = folder / "t10k-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(path.read_bytes())[8:], dtype=np.uint8).copy()
    labels[0] = (labels[0] + 1) % 10
    from benchmarks.data.idx import write_idx

    write_idx(path, labels)
    recorded = manifest.source_files[path.name]["digest"]
    with pytest.raises(ManifestMismatchError) as err:
        load_split("fashion-mnist", "test", data_root=tmp_path, manifest=manifest)
    message = str(err.value)
    assert str(path) in message and recorded in message and sha256_file(path) in message


def test_unknown_dataset_and_split_suggest_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean: cifar10") as err:
        load_split("cifar-10", "train")
    assert "cifar10" in err.value.suggestions
    with pytest.raises(UnknownNameError, match="Did you mean: fashion-mnist"):
        get_source("fashion_mnist")
    with pytest.raises(UnknownNameError, match="Did you mean: val"):
        load_split("digits", "valid")


def test_missing_fashion_mnist_copy_says_where_and_how(tmp_path, monkeypatch):
    (tmp_path / "fashion-mnist").mkdir()  # present but empty: not a copy
    source = get_source("fashion-mnist")
    tried = source.candidate_dirs(tmp_path)
    assert tried[0] == tmp_path / "fashion-mnist"
    monkeypatch.setattr(source, "system_dirs", ())  # a machine without the Debian package
    with pytest.raises(DataNotFoundError) as err:
        source.locate(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
