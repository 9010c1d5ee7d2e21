"""Protocols and budgets (PROTOCOL.md §1-2): ids that change exactly when the inputs change,
result rows that carry both, tables grouped by protocol, comparisons across protocols refused."""

from __future__ import annotations

import pytest

from benchmarks.config import find_config, load_config
from benchmarks.errors import ConfigError
from benchmarks.protocol import (
    check_same_protocol,
    protocol_of,
    protocol_of_config,
    training_budget,
)
from benchmarks.suites import suite_experiments


def test_protocol_ids_change_exactly_when_the_inputs_change():
    plain = protocol_of("digits")
    assert plain.id.startswith("digits-8px-") and plain == protocol_of("digits")
    padded = protocol_of("digits", {"pad_to": 32})
    binary = protocol_of("digits", {"positive_classes": [8]})
    subset = protocol_of("digits", {"train_subset": 500})
    ids = {plain.id, padded.id, binary.id, subset.id}
    assert len(ids) == 4, ids
    assert padded.id.startswith("digits-32px-") and "-bin-" in binary.id
    assert plain.splits.keys() == {"test", "train", "val"} and all(len(h) == 64 for h in plain.splits.values())
    assert protocol_of("cifar10").id.startswith("cifar10-32px-")  # a recipe dataset: no files needed


def test_bad_dataset_options_are_refused():
    with pytest.raises(ConfigError, match="pad_to"):
        protocol_of("digits", {"pad_to": 4})


def test_the_quick_suite_has_one_protocol():
    configs = [load_config(find_config(name), quick=quick) for name, quick in suite_experiments("quick")]
    ids = {protocol_of_config(cfg).id for cfg in configs}
    assert ids == {protocol_of("digits").id}


def test_budgets_count_stages_and_the_runs_a_run_starts_from():
    cnn = load_config(find_config("quick/digits_cnn"), quick=True)
    train = 1167  # digits' train split
    assert training_budget(cnn) == 12 * train
    base = load_config(find_config("quick/digits_resnet20"), quick=True)
    pruned = load_config(find_config("quick/digits_resnet20_l1"), quick=True)
    assert training_budget(pruned) == training_budget(base) + 2 * train  # fine-tune + its base
    lcnet = load_config(find_config("lcnet/fmnist_resnet20_l"), quick=False)
    backbone = load_config(find_config("baselines/fmnist_resnet20"), quick=False)
    assert training_budget(lcnet) == 6000 * 1 + training_budget(backbone)  # train_subset 6000


def test_a_budget_that_cannot_be_computed_names_the_config(tmp_path):
    cfg = load_config(find_config("quick/digits_resnet20_l1"), quick=True)
    cfg["method_args"]["init"] = str(tmp_path / "bare.safetensors")
    with pytest.raises(ConfigError, match="cannot compute the training budget"):
        training_budget(cfg)


def test_a_comparison_across_protocols_is_refused_naming_both():
    a, b = protocol_of("digits").id, protocol_of("digits", {"pad_to": 32}).id
    assert check_same_protocol({"lcnet": a, "static": a}) == a
    with pytest.raises(ConfigError) as info:
        check_same_protocol({"lcnet": a, "static": b})
    assert a in str(info.value) and b in str(info.value) and "lcnet" in str(info.value)


def test_rows_of_older_files_read_without_protocol_columns(tmp_path):
    from benchmarks.results import RESULT_COLUMNS, read_results

    old = [c for c in RESULT_COLUMNS if c not in ("protocol", "budget_images")]
    path = tmp_path / "old.csv"
    path.write_text(",".join(old) + "\n")
    frame = read_results(path)
    assert list(frame.columns) == list(RESULT_COLUMNS)


def test_summary_tables_group_by_protocol_and_flag_unequal_budgets():
    import pandas as pd

    from benchmarks.results import results_frame
    from benchmarks.tables import summarize_runs, summary_markdown

    a, b = protocol_of("digits").id, protocol_of("digits", {"pad_to": 32}).id
    rows = results_frame([
        {"experiment": "x", "model": "m", "dataset": "digits", "protocol": a, "budget_images": 1000, "split": "test", "seed": 0, "accuracy": 90.0},
        {"experiment": "y", "model": "m", "dataset": "digits", "protocol": a, "budget_images": 3000, "split": "test", "seed": 0, "accuracy": 91.0},
        {"experiment": "z", "model": "m", "dataset": "digits", "protocol": b, "budget_images": 1000, "split": "test", "seed": 0, "accuracy": 92.0},
    ])  # fmt: skip
    text = summary_markdown(summarize_runs(rows), "s")
    assert f"## Protocol `{a}`" in text and f"## Protocol `{b}`" in text
    assert "Budgets differ (1,000 to 3,000 training images)" in text and "equal budget" in text
    assert isinstance(summarize_runs(rows), pd.DataFrame)


def test_cost_prints_the_protocol_it_measured(capsys):
    from benchmarks.cli import main

    main(["cost", "cifar_resnet20", "--dataset", "digits", "--limit", "4", "--set", "dataset.options.pad_to=32"])
    captured = capsys.readouterr()
    assert f"protocol {protocol_of('digits', {'pad_to': 32}).id}" in captured.err
    assert "40.256" in captured.out  # ResNet-20 at 32x32, one input channel: 40,256,128 MACs


@pytest.mark.parametrize("suite", ["d2nn-fmnist", "lcnet-fmnist", "dynamic-fmnist", "method-study"])
def test_the_cpu_studies_compare_at_equal_budgets_with_three_seeds(suite):
    from benchmarks.config import find_config, load_config
    from benchmarks.suites import load_suites, suite_comparisons, suite_experiments
    from benchmarks.sweeps import expand

    suites = load_suites()
    configs = {}
    for name, quick in suite_experiments(suite, suites):
        for point in expand(load_config(find_config(name), quick=quick)):
            configs[point["name"]] = point
    assert all(len(c["seeds"]) >= 3 for c in configs.values())
    declared = suite_comparisons(suite, suites)
    assert declared
    for item in declared:
        budgets = {training_budget(c) for n, c in configs.items() if n.split("--")[0] in item.values()}
        assert len(budgets) == 1, item  # candidate and baseline: the same images seen
