"""Experiment configs: validation with clear messages, overrides, stable hashes."""

from __future__ import annotations

import pytest

from benchmarks.config import CONFIG_ROOT, config_hash, find_config, load_config, resolve_config
from benchmarks.errors import ConfigError, UnknownNameError

BASE = {
    "name": "t",
    "model": {"name": "digits_cnn"},
    "dataset": {"name": "digits"},
    "train": {"epochs": 2},
    "quick": {"train": {"epochs": 1}},
}


def test_defaults_are_filled_and_quick_override_applies():
    cfg = resolve_config(BASE)
    assert cfg["train"]["batch_size"] == 128 and cfg["seeds"] == [0]
    assert cfg["train"]["epochs"] == 2 and cfg["quick"] is False
    quick = resolve_config(BASE, quick=True)
    assert quick["train"]["epochs"] == 1 and quick["quick"] is True


def test_set_overrides_parse_yaml_values():
    cfg = resolve_config(BASE, overrides=["train.epochs=5", "train.optimizer.lr=0.01", "seeds=[1, 2]"])
    assert cfg["train"]["epochs"] == 5
    assert cfg["train"]["optimizer"]["lr"] == 0.01
    assert cfg["seeds"] == [1, 2]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=-1", "key 'train.epochs' must be a positive integer, got -1"),
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("train.augment=rotate", "key 'train.augment' must be one of none, crop_flip, flip"),
        ("model.name=resnet_nope", "key 'model.name': unknown model 'resnet_nope'"),
        ("dataset.name=digit", "Did you mean: digits"),
        ("seeds=3", "key 'seeds' must be a non-empty list of non-negative integers"),
        ("nonsense", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(BASE, where="exp.yaml", overrides=[override])
    assert message in str(info.value)


def test_missing_required_key_is_named():
    data = {k: v for k, v in BASE.items() if k != "model"}
    with pytest.raises(ConfigError, match="missing required key 'model.name'"):
        resolve_config(data, where="exp.yaml")


def test_malformed_yaml_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: {name: digits_cnn\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_hash_is_stable_and_ignores_provenance_but_not_content():
    a = resolve_config(BASE)
    b = resolve_config({**BASE, "description": "other words", "suite": "s"})
    c = resolve_config(BASE, overrides=["train.epochs=3"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def test_bundled_configs_all_validate():
    paths = sorted(CONFIG_ROOT.rglob("*.yaml"))
    configs = [p for p in paths if p.name != "suites.yaml"]
    assert configs, "no bundled configs found"
    for path in configs:
        load_config(path)
        load_config(path, quick=True)


def test_find_config_suggests_bundled_names():
    assert find_config("quick/digits_cnn").name == "digits_cnn.yaml"
    with pytest.raises(UnknownNameError, match="quick/digits_cnn"):
        find_config("quick/digit_cnn")


# --- input that used to crash, escape or be taken as given --------------------------------------

_BASE = {"name": "t", "model": {"name": "digits_cnn"}, "dataset": {"name": "digits"}, "train": {"epochs": 1}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optimizer.lr=.nan", "train.optimizer.lr must be a finite number > 0, got nan"),
        ("train.optimizer.lr=-1.0", "train.optimizer.lr must be a finite number > 0, got -1.0"),
        ("train.optimizer.weight_decay=-1", "train.optimizer.weight_decay must be a finite number >= 0"),
        ("train.optimizer.name=sgdd", "train.optimizer.name must be one of adam, adamw, sgd, got 'sgdd'"),
        ("train.optimizer.betaz=1", "unexpected keyword argument 'betaz'"),
        ("train.scheduler.name=cosin", "train.scheduler.name must be one of constant, cosine, multistep"),
        ("name=../../../escaped_run", "key 'name' must be a name of letters, digits"),
        ("name=/tmp/abs", "no '/' or '..'"),
    ],
)
def test_bad_training_settings_are_refused_before_anything_runs(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(_BASE, overrides=[override])
    assert message in str(info.value)


def test_scientific_notation_is_a_number_in_set_and_in_yaml(tmp_path):
    cfg = resolve_config(_BASE, overrides=["train.optimizer.lr=1e-3"])
    assert cfg["train"]["optimizer"]["lr"] == 0.001
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nmodel: {name: digits_cnn}\ndataset: {name: digits}\ntrain: {epochs: 1, optimizer: {name: adam, lr: 3e-4}}\n")
    assert load_config(path)["train"]["optimizer"]["lr"] == 3e-4


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: t\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(path)
    assert time.perf_counter() - start < 5


def test_every_experiment_name_is_unique_across_the_bundled_configs():
    """Result rows, latency rows and comparisons are keyed by experiment name: two configs of
    one name would mix in a suite that includes both (such as `all`)."""
    from collections import Counter

    from benchmarks.config import CONFIG_ROOT, read_yaml

    names = Counter(read_yaml(p)["name"] for p in CONFIG_ROOT.rglob("*.yaml") if p.name != "suites.yaml")
    assert not [n for n, k in names.items() if k > 1]
