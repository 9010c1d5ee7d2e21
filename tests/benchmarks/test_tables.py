"""Paper tables: the published-number mapping, tolerances, statuses, rendering and --check."""

from __future__ import annotations

import csv
import io
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from benchmarks.errors import ConfigError
from benchmarks.paper import DEFAULT_PUBLISHED, load_published
from benchmarks.results import make_row, results_frame, write_results
from benchmarks.tables import (
    STATUS_DRIFT,
    STATUS_KNOWN,
    STATUS_MISSING,
    STATUS_OK,
    build_tables,
    claim_rows,
    compare,
    count_architecture,
    load_mapping,
    printed_resolution,
    summarize_runs,
)

RESNET20_MACS, RESNET20_PARAMS = 40_551_040, 269_722  # option A, CIFAR-10 (closed form)


def write_mapping(tmp_path, text: str):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    return path


def published_subset(**filters) -> pd.DataFrame:
    df = load_published()
    for column, value in filters.items():
        df = df[df[column].isin([value] if isinstance(value, str) else value)]
    return df.reset_index(drop=True)


def result_rows(model: str, dataset: str, accuracies, experiment: str = "exp", split: str = "test"):
    return results_frame(
        make_row(suite="baselines", experiment=experiment, model=model, kind="static", method="supervised",
                 dataset=dataset, split=split, seed=seed, accuracy=acc, macs_mean=1.0, params=1)  # fmt: skip
        for seed, acc in enumerate(accuracies)
    )


# --- mapping file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("entries:\n  - match: {paper: HE16}\n    suites: [baselines]\n    model: null\n", "'reason' must say why"),
        ("entries:\n  - match: {papr: HE16}\n    suites: [baselines]\n    model: x\n", "unknown published column 'papr'"),
        ("entries:\n  - match: {paper: HE16}\n    suites: [baselines]\n    model: x\n    colour: red\n", "unknown key 'colour'"),
        ("entries:\n  - match: {paper: HE16}\n    model: x\n", "'suites' must be"),
        ("entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: x\n    deviations: {latency: slow}\n", "deviation for 'latency'"),
        ("entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: 'cifar_{depth}'\n", "may only use"),
        ("entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: x\n    cost: runs\n", "needs an 'experiment'"),
        ("entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: x\n    cost: flops\n", "'cost' must be"),
        ("entries: [\n", "not valid YAML"),
    ],
)
def test_bad_mapping_names_file_entry_and_field(tmp_path, body, message):
    path = write_mapping(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_bundled_mapping_is_valid_and_every_entry_claims_a_published_row():
    entries = load_mapping()
    claimed = set(claim_rows(load_published(), entries))
    stale = [e.index + 1 for e in entries if e.index not in claimed]
    assert not stale, f"entries {stale} of benchmarks/published_map.yaml match no published row"


def test_first_matching_entry_claims_a_row(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: HE16, backbone: resnet20}
    suites: [a]
    model: cifar_resnet20
  - match: {paper: HE16}
    suites: [b]
    model: null
    reason: later entry
""")
    entries = load_mapping(path)
    pub = published_subset(paper="HE16", dataset="cifar10", backbone=["resnet20", "resnet32"])
    claimed = claim_rows(pub, entries)
    assert set(claimed[pub["backbone"] == "resnet20"]) == {0}
    assert set(claimed[pub["backbone"] == "resnet32"]) == {1}


def test_experiment_patterns_include_and_exclude(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: LI17}
    suites: [b]
    model: cifar_vgg16
    experiment: ['l1_*', '!*_scratch']
""")
    entry = load_mapping(path)[0]
    assert entry.experiment_matches("l1_vgg16_a")
    assert not entry.experiment_matches("l1_vgg16_a_scratch")
    assert not entry.experiment_matches("other")


# --- printed precision ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("printed", "value", "resolution"),
    [
        ("1.7M", 1.7e6, 1e5),
        ("0.27M", 2.7e5, 1e4),
        ("1.25E8", 1.25e8, 1e6),
        ("11,689,512", 11_689_512, 1),
        ("7.97E8", 3.985e8, 5e5),  # FLOPs printed, MACs stored (÷ 2)
        ("93.03", 93.03, 0.01),
        ("= 43.2% MAC reduction, derived", 43.2, 0.1),
        ("Scratch-B 73.08", 73.08, 0.01),
        ("n/a", 5.0, 0.0),
    ],
)
def test_printed_resolution(printed, value, resolution):
    assert math.isclose(printed_resolution(printed, value), resolution, rel_tol=1e-9, abs_tol=1e-12)


# --- comparison -----------------------------------------------------------------------------


def test_counted_architecture_matches_the_closed_form():
    assert count_architecture("cifar_resnet20", "cifar10") == (RESNET20_MACS, RESNET20_PARAMS)


def test_static_counts_are_compared_without_training(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: HE16, dataset: cifar10, backbone: resnet20}
    suites: [baselines]
    model: cifar_{backbone}
""")
    pub = published_subset(paper="HE16", dataset="cifar10", backbone="resnet20")
    table = compare(pub, load_mapping(path)).set_index("metric")
    assert table.loc["macs", "status"] == STATUS_OK and table.loc["macs", "reproduced_value"] == RESNET20_MACS
    assert table.loc["macs", "source"] == "count"
    assert table.loc["params", "status"] == STATUS_OK  # 0.27M printed vs 269,722
    # accuracy needs a run of the mapped recipe: none is mapped here
    assert table.loc["top1_acc", "status"] == STATUS_MISSING
    assert "no experiment" in table.loc["top1_acc", "note"]
    assert "top1_err" not in table.index  # shown only where the accuracy is not printed


def test_a_count_beyond_tolerance_is_drift_and_a_documented_one_is_known(tmp_path):
    pub = published_subset(paper="HE16", dataset="cifar10", backbone="resnet20", metric="macs")
    pub.loc[:, ["value", "value_macs"]] = 42_000_000.0  # 3.6% above the architecture
    pub.loc[:, "value_as_printed"] = "42.00M"
    drift = write_mapping(tmp_path, "entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: cifar_{backbone}\n")
    row = compare(pub, load_mapping(drift)).iloc[0]
    assert row["status"] == STATUS_DRIFT
    assert math.isclose(row["delta_pct"], 100 * (RESNET20_MACS - 42e6) / 42e6)
    known = write_mapping(tmp_path, "entries:\n  - match: {paper: HE16}\n    suites: [b]\n    model: cifar_{backbone}\n"
                                    "    deviations: {macs: the paper counts something else}\n")  # fmt: skip
    row = compare(pub, load_mapping(known)).iloc[0]
    assert row["status"] == STATUS_KNOWN and row["note"] == "the paper counts something else"


def test_pruned_reductions_are_computed_against_the_base_model(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: LI17, method: l1_filter, dataset: cifar10, backbone: vgg16, variant: pruned-a}
    suites: [b]
    model: cifar_vgg16_l1_a
""")
    pub = published_subset(paper="LI17", backbone="vgg16", variant="pruned-a")
    table = compare(pub, load_mapping(path)).set_index("metric")
    macs, _ = count_architecture("cifar_vgg16_l1_a", "cifar10")
    base, _ = count_architecture("cifar_vgg16", "cifar10")
    assert math.isclose(table.loc["macs_reduction", "reproduced_value"], 100 * (1 - macs / base))
    assert table.loc["macs_reduction", "source"] == "count vs cifar_vgg16"
    assert set(table.loc[["macs", "params", "macs_reduction", "params_reduction"], "status"]) == {STATUS_OK}


def test_accuracy_comes_from_the_mapped_experiment_as_a_seed_mean(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: HE16, dataset: cifar10, backbone: resnet20}
    suites: [b]
    model: cifar_resnet20
    experiment: he_resnet20
""")
    pub = published_subset(paper="HE16", dataset="cifar10", backbone="resnet20", metric="top1_acc")  # 91.25
    rows = pd.concat([result_rows("cifar_resnet20", "cifar10", [91.0, 91.2, 91.4], "he_resnet20"),
                      result_rows("cifar_resnet20", "cifar10", [50.0], "other_recipe"),
                      result_rows("cifar_resnet20", "cifar10", [10.0], "he_resnet20", split="val")])  # fmt: skip
    row = compare(pub, load_mapping(path), rows).iloc[0]
    assert row["status"] == STATUS_OK and row["seeds"] == 3
    assert math.isclose(row["reproduced_value"], 91.2) and math.isclose(row["reproduced_std"], 0.2)
    low = result_rows("cifar_resnet20", "cifar10", [89.9, 90.1, 90.0], "he_resnet20")
    assert compare(pub, load_mapping(path), low).iloc[0]["status"] == STATUS_DRIFT
    # --tolerance-acc widens it
    assert compare(pub, load_mapping(path), low, tolerances={"top1_acc": _tol(1.5)}).iloc[0]["status"] == STATUS_OK


def test_cost_from_runs_for_architectures_found_by_training(tmp_path):
    """Network slimming: MACs and params come from the run, reductions against the counted base."""
    path = write_mapping(tmp_path, """entries:
  - match: {paper: LIU17, method: network_slimming, backbone: vgg19, dataset: cifar10, variant: pruned-70pct}
    suites: [b]
    model: cifar_vgg19
    experiment: cifar10_vgg19_slim70
    cost: runs
""")
    pub = published_subset(paper="LIU17", method="network_slimming", backbone="vgg19", dataset="cifar10")
    base_macs, base_params = count_architecture("cifar_vgg19", "cifar10")
    rows = results_frame(
        make_row(experiment="cifar10_vgg19_slim70", model="cifar_vgg19_slim", dataset="cifar10", split="test",
                 seed=seed, accuracy=93.7, macs_mean=0.49 * base_macs, params=int(0.115 * base_params))  # fmt: skip
        for seed in range(3)
    )
    table = compare(pub, load_mapping(path), rows).set_index("metric")
    assert table.loc["macs", "source"] == "runs: cifar10_vgg19_slim70" and table.loc["macs", "seeds"] == 3
    assert math.isclose(table.loc["macs_reduction", "reproduced_value"], 51.0)
    assert table.loc["macs_reduction", "source"] == "runs: cifar10_vgg19_slim70 vs cifar_vgg19"
    assert math.isclose(table.loc["params_reduction", "reproduced_value"], 88.5, abs_tol=0.01)
    assert set(table["status"]) == {STATUS_OK}


def _tol(points: float):
    from benchmarks.tables import Tolerance

    return Tolerance("abs", points)


def test_null_and_unregistered_models_are_not_reproduced_with_a_reason(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: HE16, backbone: resnet1202}
    suites: [b]
    model: null
    reason: not registered here
  - match: {paper: HE16, backbone: resnet110}
    suites: [b]
    model: cifar_resnet110_xyz
""")
    pub = published_subset(paper="HE16", dataset="cifar10", backbone=["resnet1202", "resnet110"], metric="params")
    table = compare(pub, load_mapping(path)).set_index("backbone")
    assert (table["status"] == STATUS_MISSING).all()
    assert table.loc["resnet1202", "note"] == "not registered here"
    assert "'cifar_resnet110_xyz' is not registered" in table.loc["resnet110", "note"]


def test_entries_outside_the_suite_are_left_out(tmp_path):
    path = write_mapping(tmp_path, """entries:
  - match: {paper: HE16, dataset: cifar10, backbone: resnet20}
    suites: [lcnet]
    model: cifar_resnet20
""")
    pub = published_subset(paper="HE16", dataset="cifar10", backbone="resnet20")
    assert compare(pub, load_mapping(path), suites=["baselines"]).empty
    assert not compare(pub, load_mapping(path), suites=["lcnet"]).empty


# --- seed means -----------------------------------------------------------------------------


def test_summarize_runs_folds_seeds_into_mean_and_std():
    rows = pd.concat([result_rows("m", "digits", [90.0, 92.0, 94.0]),
                      result_rows("m", "digits", [80.0], split="val")])  # fmt: skip
    summary = summarize_runs(rows).set_index("split")
    assert summary.loc["test", "seeds"] == 3 and summary.loc["test", "accuracy"] == 92.0
    assert math.isclose(summary.loc["test", "accuracy_std"], 2.0)
    assert math.isnan(summary.loc["val", "accuracy_std"])
    assert list(summary.index) == ["val", "test"]


def test_summary_shows_the_f_score_where_a_dataset_reports_one():
    from benchmarks.tables import summary_markdown

    rows = results_frame(make_row(experiment="lfwb", model="m", kind="dynamic", method="d2nn", dataset="lfw-b",
                                  split="test", seed=s, accuracy=99.0, f1=f1) for s, f1 in enumerate([80.0, 82.0]))  # fmt: skip
    md = summary_markdown(summarize_runs(rows), "d2nn")
    assert "| F-score (%) |" in md and "81.00 ± 1.41" in md
    assert "F-score" not in summary_markdown(summarize_runs(result_rows("m", "digits", [90.0])), "quick")


# --- files and the command line -------------------------------------------------------------


def _published_csv_with(tmp_path, edit) -> str:
    """A copy of published.csv with `edit(row)` applied to every row (returns the path)."""
    text = DEFAULT_PUBLISHED.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in reader:
        writer.writerow(edit(row))
    path = tmp_path / "published.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    return str(path)


SMALL_MAP = """entries:
  - match: {paper: [HE16, AKA], dataset: cifar10, backbone: [resnet20, resnet32]}
    suites: [baselines]
    model: cifar_{backbone}
    experiment: he_{backbone}
"""


def test_build_tables_writes_markdown_csv_and_latex(tmp_path):
    mapping = write_mapping(tmp_path, SMALL_MAP)
    rows = result_rows("cifar_resnet20", "cifar10", [91.3, 91.5], "he_resnet20")
    report = build_tables("baselines", tmp_path / "tables", rows=rows, mapping=mapping)
    names = sorted(p.name for p in report.files)
    assert names == ["baselines.md", "baselines.tex", "baselines_vs_published.csv",
                     "baselines_vs_published.md", "baselines_vs_published.tex"]  # fmt: skip
    md = (tmp_path / "tables" / "baselines_vs_published.md").read_text()
    assert "| HE16 | Table 6 | cifar10 | resnet20 | static | top1_acc | 91.25 |" in md
    assert "91.40 ± 0.14 (2 seeds)" in md
    tex = (tmp_path / "tables" / "baselines_vs_published.tex").read_text()
    assert r"\begin{longtable}" in tex and r"$\pm$" in tex and "cifar\\_resnet20" in tex
    frame = pd.read_csv(tmp_path / "tables" / "baselines_vs_published.csv")
    assert set(frame["status"]) == {STATUS_OK, STATUS_MISSING}
    assert report.reproduced() == int((frame["status"] != STATUS_MISSING).sum())


def test_quick_suite_gets_no_comparison_table(tmp_path):
    rows = result_rows("digits_cnn", "digits", [97.0])
    report = build_tables("quick", tmp_path, rows=rows)
    assert sorted(p.name for p in report.files) == ["quick.md", "quick.tex"]


def test_tables_reads_the_suite_csv_and_checks(tmp_path):
    from benchmarks.cli import cli

    mapping = write_mapping(tmp_path, SMALL_MAP)
    write_results(result_rows("cifar_resnet20", "cifar10", [91.2, 91.3, 91.4], "he_resnet20"),
                  tmp_path / "tables" / "baselines.csv")  # fmt: skip
    runner = CliRunner()
    ok = runner.invoke(cli, ["tables", "--suite", "baselines", "--check", "--out", str(tmp_path / "tables"),
                             "--mapping", str(mapping)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "3 result row(s)" in ok.output and "check passed" in ok.output

    def wrong_macs(row):
        if row["paper"] == "HE16" and row["backbone"] == "resnet32" and row["metric"] == "macs":
            row.update(value="75000000", value_macs="75000000", value_as_printed="75.00M")
        return row

    published = _published_csv_with(tmp_path, wrong_macs)
    bad = runner.invoke(cli, ["tables", "--suite", "baselines", "--check", "--out", str(tmp_path / "tables"),
                              "--mapping", str(mapping), "--published", published])  # fmt: skip
    assert bad.exit_code == 1
    assert "DRIFT: HE16 Table 6: cifar10 resnet32 static macs: published 75.00M" in bad.output
    assert "reproduced 68.863M [cifar_resnet32]" in bad.output and "check failed: 1" in bad.output
    # --tolerance-acc 0.01: the 3-seed mean 91.30 is 0.05 points from He et al.'s 91.25
    strict = runner.invoke(cli, ["tables", "--suite", "baselines", "--check", "--out", str(tmp_path / "tables"),
                                 "--mapping", str(mapping), "--tolerance-acc", "0.01"])  # fmt: skip
    assert strict.exit_code == 1 and "top1_acc" in strict.output


def test_unknown_suite_and_bad_tolerance_are_user_errors(tmp_path):
    from benchmarks.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown suite 'baseline'"):
        build_tables("baseline", tmp_path)
    with pytest.raises(ConfigError, match="--tolerance-acc"):
        build_tables("baselines", tmp_path, rows=results_frame([]), tolerance_acc=-1)


@pytest.mark.slow
def test_baselines_architecture_counts_match_the_papers(tmp_path):
    """The real check: every static/pruned count the baselines suite maps is within tolerance
    (or a documented deviation); He et al., Li et al. Table 1 and torchvision included."""
    report = build_tables("baselines", tmp_path, rows=results_frame([]))
    table = report.comparison
    assert report.failures.empty, "\n".join(report.failures["published_id"])
    counted = table[table["source"].str.startswith("count").fillna(False)]
    assert len(counted) >= 80
    for paper in ("HE16", "LI17", "TV"):
        assert (counted["paper"] == paper).sum() >= 5, paper
    li17_pruned = counted[(counted["paper"] == "LI17") & counted["variant"].str.startswith("pruned")]
    assert set(li17_pruned["model"]) >= {"cifar_vgg16_l1_a", "cifar_resnet56_l1_a", "cifar_resnet56_l1_b",
                                         "cifar_resnet110_l1_a", "cifar_resnet110_l1_b"}  # fmt: skip
    assert set(table.loc[table["status"] == STATUS_KNOWN, "model"]) <= {"resnet34", "mobilenet_v2"}
