"""Dataset options (padding, binary task, training subset) and their validation."""

from __future__ import annotations

import pytest
import torch

from benchmarks.config import resolve_config
from benchmarks.data import dataset_info, load_split
from benchmarks.engine.method import f1_percent
from benchmarks.errors import ConfigError


def test_pad_to_centres_the_image_on_black():
    plain = load_split("digits", "val")
    padded = load_split("digits", "val", options={"pad_to": 12})
    assert padded.images.shape[-2:] == (12, 12)
    assert torch.equal(padded.images[:, :, 2:10, 2:10], plain.images)
    info = dataset_info("digits")
    black = -info.mean[0] / info.std[0]
    assert torch.allclose(padded.images[:, :, :2, :], torch.full_like(padded.images[:, :, :2, :], black))
    assert dataset_info("digits", {"pad_to": 12}).input_shape == (1, 12, 12)


def test_positive_classes_make_a_binary_f1_task():
    data = load_split("digits", "test", options={"positive_classes": [3, 8]})
    original = load_split("digits", "test")
    assert torch.equal(data.targets, torch.isin(original.targets, torch.tensor([3, 8])).long())
    info = dataset_info("digits", {"positive_classes": [8, 3]})
    assert info.num_classes == 2 and info.metric == "f1"


def test_train_subset_is_stratified_deterministic_and_leaves_val_and_test_whole():
    a = load_split("digits", "train", options={"train_subset": 300})
    b = load_split("digits", "train", options={"train_subset": 300})
    assert len(a) == 300 and torch.equal(a.images, b.images)
    share = load_split("digits", "train").targets.bincount().double() * 300 / 1167
    assert (a.targets.bincount().double() - share).abs().max() < 1.0
    assert len(load_split("digits", "val", options={"train_subset": 300})) == len(load_split("digits", "val"))
    assert len(load_split("digits", "test", options={"train_subset": 300})) == len(load_split("digits", "test"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pad_to": 4}, "'dataset.options.pad_to' must be an integer >= the image size 8"),
        ({"positive_classes": [10]}, "'dataset.options.positive_classes' must be a list of class indices in 0..9"),
        ({"positive_classes": list(range(10))}, "not all of them"),
        ({"train_subset": 3}, "'dataset.options.train_subset' must be an integer >= the number of classes"),
        ({"pad": 32}, "unknown key 'dataset.options.pad'"),
    ],
)
def test_bad_options_are_named_in_the_config_error(options, message):
    cfg = {"name": "x", "model": {"name": "digits_cnn"}, "dataset": {"name": "digits", "options": options}, "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        resolve_config(cfg, where="exp.yaml")


def test_f1_percent_matches_a_hand_computed_example():
    # tp=3, fp=1, fn=2: precision 3/4, recall 3/5, F1 = 2*3/(2*3+1+2) = 6/9
    assert f1_percent(3, 1, 2) == pytest.approx(100 * 6 / 9)
    assert f1_percent(0, 0, 0) == 0.0
