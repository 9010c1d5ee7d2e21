"""The registry: stable ids, lookups with suggestions, and every registered model builds."""

from __future__ import annotations

import pytest
import torch

from benchmarks.errors import UnknownNameError
from benchmarks.registry import create_model, get_model_spec, list_models, register_model


def test_list_models_finds_registered_ids_and_filters_by_pattern_and_kind():
    names = list_models()
    assert "digits_cnn" in names and "fmnist_cnn" in names
    assert names == sorted(names)
    assert list_models("digits_*") == ["digits_cnn"] or "digits_cnn" in list_models("digits_*")
    assert all(get_model_spec(n).kind == "static" for n in list_models(kind="static"))


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        create_model("digit_cnn")
    assert "digits_cnn" in str(info.value)
    assert info.value.suggestions[0] == "digits_cnn"


def test_create_model_records_arch_config_for_checkpoints():
    model = create_model("digits_cnn", num_classes=7)
    assert model.arch_config == {"name": "digits_cnn", "kwargs": {"num_classes": 7}}
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_registering_an_id_twice_with_another_builder_is_refused():
    @register_model("_test_twice", paper="test")
    def first(**kwargs):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):

        @register_model("_test_twice", paper="test")
        def second(**kwargs):
            return torch.nn.Identity()


def test_every_spec_names_its_paper():
    for name in list_models():
        spec = get_model_spec(name)
        assert spec.paper, f"{name} does not name its paper"
        assert spec.kind in ("static", "pruned", "dynamic")
