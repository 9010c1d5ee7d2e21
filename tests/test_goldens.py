"""CI goldens: a fresh deterministic CPU run must reproduce results/expected/quick.json.

When one of these fails, some implementation moved a pinned number (the message names the
experiment or architecture, the metric, expected and got). If the change is deliberate,
regenerate the goldens with `python -m benchmarks.goldens update` and commit the diff.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from benchmarks import goldens
from benchmarks.goldens import compare, format_mismatches, load_expected

EXPECTED = goldens.golden_file("quick")


@pytest.fixture(scope="module")
def expected():
    return load_expected(EXPECTED)


# --- the comparison itself (fast) -----------------------------------------------------------


def test_goldens_file_pins_every_quick_experiment(expected):
    from benchmarks.suites import suite_experiments

    names = {config.rsplit("/", 1)[-1] for config, _ in suite_experiments("quick")}
    missing = names - set(expected["experiments"])
    assert not missing, f"quick experiments without goldens: {sorted(missing)}; run " \
                        f"`python -m benchmarks.goldens update --only NAME`"  # fmt: skip
    for record in expected["experiments"].values():
        assert record["seed"] == 0 and {"val", "test"} <= set(record["splits"])
        assert "units_histogram" in record["routing"] and "unit_rates" in record["routing"]


def test_identical_documents_match(expected):
    assert compare(expected, copy.deepcopy(expected)) == ([], [])


def test_accuracy_within_tolerance_passes_and_beyond_fails_with_a_readable_line(expected):
    name = next(iter(expected["experiments"]))
    got = copy.deepcopy(expected)
    got["experiments"][name]["splits"]["test"]["accuracy"] += 0.4
    assert compare(expected, got)[0] == []
    got["experiments"][name]["splits"]["test"]["accuracy"] += 0.3
    mismatches, _ = compare(expected, got)
    assert [(m.item, m.metric, m.allowed) for m in mismatches] == [(name, "test.accuracy", "±0.5 pt")]
    text = format_mismatches(mismatches, EXPECTED, expected)
    assert name in text and "test.accuracy" in text and "expected" in text and "got" in text
    assert "python -m benchmarks.goldens update" in text


def test_static_macs_are_exact(expected):
    name = next(n for n, r in expected["experiments"].items() if r["splits"]["val"]["macs_std"] == 0)
    got = copy.deepcopy(expected)
    got["experiments"][name]["splits"]["val"]["macs_mean"] += 1
    (m,), _ = compare(expected, got)
    assert (m.metric, m.allowed) == ("val.macs_mean", "exact")


def test_input_dependent_macs_and_routing_have_stated_tolerances():
    record = {
        "config_hash": "h", "model": "m", "params": 10,
        "splits": {"test": {"accuracy": 90.0, "macs_mean": 1000.0, "macs_std": 50.0, "macs_theoretical_mean": 990.0}},
        "routing": {"units_histogram": {"1": 5}, "unit_rates": {"block1": 0.5}},
    }  # fmt: skip
    expected = {"experiments": {"dyn": record}}
    got = copy.deepcopy(expected)
    got["experiments"]["dyn"]["splits"]["test"]["macs_mean"] = 1004.0  # 0.4%
    got["experiments"]["dyn"]["routing"]["unit_rates"]["block1"] = 0.505
    assert compare(expected, got)[0] == []
    got["experiments"]["dyn"]["splits"]["test"]["macs_mean"] = 1010.0  # 1%
    got["experiments"]["dyn"]["splits"]["test"]["macs_theoretical_mean"] = 991.0  # exact even here
    got["experiments"]["dyn"]["routing"]["unit_rates"]["block1"] = 0.53
    metrics = {m.metric for m in compare(expected, got)[0]}
    assert metrics == {"test.macs_mean", "test.macs_theoretical_mean", "routing.block1"}


def test_config_changes_missing_runs_and_architectures(expected):
    got = copy.deepcopy(expected)
    name = next(iter(got["experiments"]))
    got["experiments"][name]["config_hash"] = "0" * 64
    got["experiments"]["new_exp"] = got["experiments"][name]
    arch = next(iter(got["architectures"]))
    got["architectures"]["brand_new@digits"] = {"kind": "static", "macs": 1, "params": 1}
    del got["architectures"][arch]
    mismatches, notes = compare(expected, got)
    found = {(m.item, m.metric) for m in mismatches}
    assert (name, "config_hash") in found and ("new_exp", "experiment") in found
    assert (f"arch {arch}", "registered") in found
    assert notes == ["architecture brand_new@digits is not pinned yet (python -m benchmarks.goldens update)"]


# --- fresh runs against the goldens (slow) --------------------------------------------------


@pytest.mark.slow
def test_quick_experiments_reproduce_their_goldens(expected, tmp_path):
    got = {"experiments": {}}
    for name, record in expected["experiments"].items():
        got["experiments"][name] = goldens.run_experiment(record["config"], tmp_path, record["overrides"])
    mismatches, _ = compare({**expected, "architectures": {}}, got)
    assert not mismatches, format_mismatches(mismatches, EXPECTED, expected)


@pytest.mark.slow
def test_architecture_counts_reproduce_their_goldens(expected):
    pinned = sorted({key.split("@")[0] for key in expected["architectures"]})
    got = {"experiments": expected["experiments"], "architectures": goldens.architecture_counts(pinned)}
    mismatches, _ = compare(expected, got)
    assert not mismatches, format_mismatches(mismatches, EXPECTED, expected)


@pytest.mark.slow
def test_a_broken_architecture_fails_the_goldens(expected, monkeypatch):
    """A deliberately wrong shortcut option (B instead of A) in ResNet-20 must be caught."""
    from benchmarks import registry

    spec = registry.get_model_spec("cifar_resnet20")
    wrong = registry.get_model_spec("cifar_resnet20_b").builder
    monkeypatch.setitem(registry._REGISTRY, "cifar_resnet20", dataclasses.replace(spec, builder=wrong))
    got = {"experiments": expected["experiments"], "architectures": goldens.architecture_counts(["cifar_resnet20"])}
    mismatches, _ = compare({**expected, "architectures": {"cifar_resnet20@cifar10": expected["architectures"]["cifar_resnet20@cifar10"]}}, got)
    assert [(m.item, m.metric, m.expected, m.got) for m in mismatches] == [
        ("arch cifar_resnet20@cifar10", "macs", 40_551_040, 40_813_184),
        ("arch cifar_resnet20@cifar10", "params", 269_722, 272_474),
    ]
