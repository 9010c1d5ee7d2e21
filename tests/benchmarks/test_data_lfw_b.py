"""LFW-B: face / background crops from a tiny LFW folder of real 250×250 JPEGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.data import dataset_info, get_source, load_split
from benchmarks.data.lfw_b import LFWB, box_iou, sample_background_boxes
from benchmarks.data.manifest import SplitEntry, load_manifest
from benchmarks.errors import ManifestMismatchError
from benchmarks.io import sha256_file
from tests.benchmarks.fixtures_data import lfw_b_recipe, make_lfw, use_source

N_IMAGES = 12  # make_lfw's default: 6 people, 12 images
FACE = (65, 65, 185, 185)


@pytest.fixture
def lfw(tmp_path, monkeypatch):
    folder = make_lfw(tmp_path)
    source = LFWB(recipe=lfw_b_recipe(tmp_path, N_IMAGES))
    use_source(monkeypatch, source)
    workdir = source.prepare(tmp_path, download=False)
    return tmp_path, folder, source, workdir


def test_info():
    info = dataset_info("lfw-b")
    assert info.metric == "f1" and info.class_names == ("background", "face")
    assert info.input_shape == (3, 32, 32)


def test_checked_in_split_hashes_follow_from_the_lfw_image_count():
    """The pinned hashes depend only on LFW's 13,233 images and the seed, not on pixels."""
    source = get_source("lfw-b")
    recipe = source.recipe()
    per_image = 1 + recipe.extra["backgrounds_per_image"]
    for name, chosen in source.split_images(13233).items():
        index = (chosen[:, None] * per_image + np.arange(per_image)).reshape(-1)
        assert SplitEntry.build("crops", index).sha256 == recipe.extra["split_sha256"][name]
        assert len(index) == recipe.extra["split_counts"][name]
    assert recipe.extra["split_counts"] == {"train": 112563, "val": 11000, "test": 22000}


def test_background_boxes_avoid_the_face():
    for seed in range(20):
        boxes = sample_background_boxes(np.random.default_rng(seed), 10, (250, 250), FACE, (40, 125), 0.3)
        assert boxes.shape == (10, 4)
        for box in boxes:
            box = tuple(int(v) for v in box)
            assert box_iou(box, FACE) < 0.3
            assert 0 <= box[0] < box[2] <= 250 and 0 <= box[1] < box[3] <= 250
            assert box[2] - box[0] == box[3] - box[1]
    assert box_iou(FACE, FACE) == 1.0 and box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_crops_boxes_and_splits(lfw):
    root, folder, source, workdir = lfw
    manifest = load_manifest(workdir / "manifest.json")
    images = manifest.extra["images"]
    assert len(images) == N_IMAGES and images == sorted(images)
    assert images[0] == "Person_A/Person_A_0001.jpg"
    boxes = np.asarray(manifest.extra["crops"])
    assert boxes.shape == (N_IMAGES * 4, 6)
    faces = boxes[boxes[:, 5] == 1]
    assert len(faces) == N_IMAGES and (faces[:, 1:5] == FACE).all()
    for row in boxes[boxes[:, 5] == 0]:
        assert box_iou(tuple(row[1:5]), FACE) < 0.3

    crops = np.load(workdir / "crops-32x32.npy")
    assert crops.shape == (N_IMAGES * 4, 32, 32, 3) and crops.dtype == np.uint8
    with Image.open(folder / images[5]) as img:
        face = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=FACE))
    assert (crops[5 * 4] == face).all()
    assert crops[5 * 4].mean() > crops[5 * 4 + 1 : 5 * 4 + 4].mean()  # the bright fixture "face"

    seen: set[int] = set()
    for split, n_images in (("train", 7), ("val", 2), ("test", 3)):
        entry = manifest.splits[split]
        assert entry.pool == "crops" and len(entry.indices) == 4 * n_images
        owners = set(boxes[entry.indices, 0].tolist())
        assert len(owners) == n_images  # all crops of an image in the same split
        assert seen.isdisjoint(owners)
        seen |= owners
        data = load_split("lfw-b", split, data_root=root)
        assert data.images.shape == (4 * n_images, 3, 32, 32)
        assert int(data.targets.sum()) == n_images  # one face per image, label 1
        pixels = (data.images * 0.5 + 0.5) * 255  # mean = std = 0.5
        expected = torch.from_numpy(crops[entry.indices]).permute(0, 3, 1, 2).float()
        assert torch.allclose(pixels, expected, atol=1e-3)
    assert seen == set(range(N_IMAGES))


def test_prepare_is_byte_identical_and_full_verify_passes(lfw):
    root, _, source, workdir = lfw
    manifest_bytes = (workdir / "manifest.json").read_bytes()
    crops_hash = sha256_file(workdir / "crops-32x32.npy")
    source.prepare(root, download=False)
    assert (workdir / "manifest.json").read_bytes() == manifest_bytes
    assert sha256_file(workdir / "crops-32x32.npy") == crops_hash
    source.verify(workdir, full=True)


def test_tampered_crops_and_changed_lfw_images(lfw):
    root, folder, source, workdir = lfw
    crops = workdir / "crops-32x32.npy"
    recorded = sha256_file(crops)
    original = crops.read_bytes()
    blob = bytearray(original)
    blob[-1] ^= 0xFF
    crops.write_bytes(bytes(blob))
    with pytest.raises(ManifestMismatchError) as err:
        load_split("lfw-b", "val", data_root=root)
    assert str(crops) in str(err.value) and recorded in str(err.value)
    assert sha256_file(crops) in str(err.value)
    crops.write_bytes(original)

    # An edited LFW image does not touch the cached crops; only --full notices it.
    image = folder / "Person_B" / "Person_B_0001.jpg"
    with Image.open(image) as img:
        Image.fromarray(255 - np.asarray(img)).save(image, quality=90)
    source.verify(workdir)
    with pytest.raises(ManifestMismatchError, match="'crops-32x32.npy' in .* has digest"):
        source.verify(workdir, full=True)
