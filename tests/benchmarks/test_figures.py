"""Trade-off figures: operating points, published points, latency joins, files written."""

from __future__ import annotations

import math

import pandas as pd

from benchmarks.figures import (
    comparison_groups,
    join_latency,
    load_latency,
    make_figures,
    operating_points,
    published_points,
    published_series,
    reproduced_series,
)
from benchmarks.paper import load_published
from benchmarks.results import make_row, results_frame


def row(experiment, model, kind, method, accuracy, macs, seed=0, split="test", dataset="digits"):
    return make_row(suite="quick", experiment=experiment, model=model, kind=kind, method=method, dataset=dataset,
                    split=split, seed=seed, accuracy=accuracy, macs_mean=macs, run_dir=f"/runs/{experiment}-s{seed}")  # fmt: skip


def quick_rows() -> pd.DataFrame:
    rows = [row("digits_cnn", "digits_cnn", "static", "supervised", 97.0, 378_176)]
    rows += [row("digits_cnn", "digits_cnn", "static", "supervised", 98.0, 378_176, seed=1)]
    rows += [row("digits_cnn", "digits_cnn", "static", "supervised", 50.0, 378_176, split="val")]
    for i, (acc, macs) in enumerate([(90, 1e5), (93, 1.5e5), (95, 2e5), (96, 2.6e5), (96.5, 3e5)]):
        rows.append(row(f"d2nn_lam{i}", "d2nn_chain", "dynamic", "d2nn", acc, macs))
    return results_frame(rows)


def test_operating_points_fold_seeds_and_use_the_test_split():
    points = operating_points(quick_rows()).set_index("experiment")
    assert points.loc["digits_cnn", "seeds"] == 2 and points.loc["digits_cnn", "score"] == 97.5
    assert math.isclose(points.loc["digits_cnn", "score_std"], math.sqrt(0.5))
    assert points.loc["digits_cnn", "metric"] == "accuracy"
    assert len(points) == 6


def test_a_dynamic_method_is_one_curve_sorted_by_macs_and_static_models_are_points():
    series = {s.label: s for s in reproduced_series(operating_points(quick_rows()))}
    assert set(series) == {"digits_cnn", "d2nn_chain"}
    curve = series["d2nn_chain"]
    assert curve.kind == "dynamic" and curve.x == sorted(curve.x) and len(curve.x) == 5
    assert series["digits_cnn"].kind == "static"


def test_published_points_pair_accuracy_and_macs_across_tables_and_skip_other_protocols():
    pub = load_published()
    points = published_points(pub[pub["dataset"] == "imagenet"])
    # torchvision's ResNet-50 v1 weights: accuracy and MACs from the same docs table
    tv = points[(points["paper"] == "TV") & (points["backbone"] == "resnet50") & (points["variant"] == "tv-imagenet1k_v1")]
    assert len(tv) == 1 and tv["accuracy"].item() == 76.13 and tv["macs"].item() == 4.089e9
    # He et al.'s ImageNet accuracies are 10-crop / multi-scale: not drawn beside center crops
    assert (points["paper"] != "HE16").all()
    # an error rate stands in where only the error is printed (Li et al. Table 1: 100 - 6.60)
    li = published_points(pub[(pub["paper"] == "LI17") & (pub["variant"] == "pruned-a") & (pub["backbone"] == "vgg16")])
    assert math.isclose(li["accuracy"].item(), 93.4) and li["macs"].item() == 2.06e8


def test_published_series_label_depths_and_variants():
    pub = load_published()
    points = published_points(pub[(pub["dataset"] == "cifar10") & pub["paper"].isin(["HE16", "LI17"])])
    series = {s.label: s for s in published_series(points)}
    he = series["HE16 resnet"]
    assert he.point_labels == ["20", "32", "44", "56", "110"]
    li = series["LI17 l1_filter resnet56"]
    assert li.point_labels == ["B", "A", "base"]  # sorted by MACs
    # Li et al.'s static VGG-16 and its L1 "baseline" are one printed model: drawn once, as
    # the start of the L1 curve
    assert "LI17 vgg" not in series and series["LI17 l1_filter vgg16"].point_labels == ["A", "base"]


def test_make_figures_writes_png_and_svg_reproducibly(tmp_path):
    pub = load_published()
    published = pub[(pub["dataset"] == "cifar10") & (pub["paper"] == "HE16")]
    rows = pd.concat([quick_rows(), results_frame([row("r20", "cifar_resnet20", "static", "supervised", 91.5, 40.55e6, dataset="cifar10")])])
    paths = make_figures("demo", rows, tmp_path / "figures", published=published, latency_files=[])
    names = sorted(p.name for p in paths)
    assert names == ["demo_accuracy_vs_macs_cifar10.png", "demo_accuracy_vs_macs_cifar10.svg",
                     "demo_accuracy_vs_macs_digits.png", "demo_accuracy_vs_macs_digits.svg"]  # fmt: skip
    png = (tmp_path / "figures" / "demo_accuracy_vs_macs_digits.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    svg = (tmp_path / "figures" / "demo_accuracy_vs_macs_cifar10.svg").read_text()
    assert "HE16 resnet (published)" in svg and "cifar_resnet20" in svg
    assert "log scale" not in svg  # 40M..253M: a linear axis reads better
    again = make_figures("demo", rows, tmp_path / "again", published=published, latency_files=[])
    assert [p.read_bytes() for p in again if p.suffix == ".svg"] == [p.read_bytes() for p in paths if p.suffix == ".svg"]


def test_no_rows_and_no_published_points_draw_nothing(tmp_path):
    assert make_figures("empty", results_frame([]), tmp_path, latency_files=[]) == []


def _latency_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _lat(model, engine="none", batch=1, p50=1.0, dataset="digits", **extra):
    return {"model": model, "engine": engine, "device": "cpu", "batch_size": batch, "p50_ms": p50,
            "dataset": dataset, **extra}  # fmt: skip


def test_latency_joins_by_model_only_when_unambiguous(tmp_path):
    points = operating_points(quick_rows())
    files = [
        _latency_csv(tmp_path / "a.csv", [_lat("digits_cnn", p50=0.2), _lat("digits_cnn", batch=64, p50=2.0)]),
        _latency_csv(tmp_path / "b.csv", [_lat("d2nn_chain", engine="sparse", p50=0.5)]),
        _latency_csv(tmp_path / "c.csv", [_lat("d2nn_chain", engine="sparse", p50=0.4, run_dir="/runs/d2nn_lam2-s0")]),
        _latency_csv(tmp_path / "broken.csv", [{"model": "x"}]),
    ]
    messages = []
    latency = load_latency(files)
    assert len(latency) == 4  # the file without the needed columns is skipped
    joined = join_latency(points, latency, log=messages.append)
    assert set(joined["experiment"]) == {"digits_cnn", "d2nn_lam2"}
    assert joined.loc[joined["experiment"] == "d2nn_lam2", "latency_ms"].item() == 0.4
    assert any("fits 5 operating points" in m for m in messages)


def test_latency_figure_per_dataset_and_device_at_batch_one(tmp_path):
    rows = quick_rows()
    latency_dir = tmp_path / "latency" / "digits_cnn-cpu"
    latency_dir.mkdir(parents=True)
    _latency_csv(latency_dir / "latency_summary.csv", [_lat("digits_cnn", p50=0.2), _lat("digits_cnn", batch=64, p50=2.0)])
    paths = make_figures("quick", rows, tmp_path / "figures", log=lambda m: None)
    names = {p.name for p in paths}
    assert "quick_accuracy_vs_latency_digits_cpu_b1.png" in names
    assert "quick_accuracy_vs_latency_digits_cpu_b1.svg" in names
    svg = (tmp_path / "figures" / "quick_accuracy_vs_latency_digits_cpu_b1.svg").read_text()
    assert "median latency per batch of 1 (ms)" in svg


def test_wide_cost_spans_get_a_log_axis(tmp_path):
    rows = results_frame([row("small", "digits_cnn", "static", "supervised", 90.0, 1e5),
                          row("big", "fmnist_cnn", "static", "supervised", 95.0, 3e7)])  # fmt: skip
    (svg,) = [p for p in make_figures("wide", rows, tmp_path, latency_files=[]) if p.suffix == ".svg"]
    assert "MACs per image (mean executed, batch 1) (log scale)" in svg.read_text()


def test_a_pruning_curve_starts_at_its_base_model():
    rows = results_frame([row("r56", "cifar_resnet56", "static", "supervised", 93.0, 125e6, dataset="cifar10"),
                          row("r56_a", "cifar_resnet56_l1_a", "pruned", "l1_filter", 93.1, 112e6, dataset="cifar10"),
                          row("r56_b", "cifar_resnet56_l1_b", "pruned", "l1_filter", 92.9, 91e6, dataset="cifar10")])  # fmt: skip
    series = {s.label: s for s in reproduced_series(operating_points(rows))}
    assert series["l1_filter (cifar_resnet56)"].point_labels == ["r56_b", "r56_a", "r56"]
    assert series["cifar_resnet56"].kind == "static"


def test_f_score_datasets_plot_the_f_score(tmp_path):
    rows = results_frame([
        make_row(experiment=f"lfwb_{i}", model="d2nn_cascade", kind="dynamic", method="d2nn", dataset="lfw-b",
                 split="test", seed=0, accuracy=99.0, f1=f1, macs_mean=macs)
        for i, (f1, macs) in enumerate([(80.0, 1e6), (85.0, 2e6)])
    ])  # fmt: skip
    points = operating_points(rows)
    assert list(points["score"]) == [80.0, 85.0] and set(points["metric"]) == {"f1"}
    (svg,) = [p for p in make_figures("d2nn", rows, tmp_path, latency_files=[]) if p.suffix == ".svg"]
    assert "F-score on test (%)" in svg.read_text()


def test_a_task_made_binary_by_dataset_options_plots_its_f_score():
    rows = results_frame([make_row(experiment="hl", model="d2nn_highlow", kind="dynamic", method="d2nn",
                                   dataset="fashion-mnist", split="test", seed=0, accuracy=98.0, f1=91.0, macs_mean=1e5)])  # fmt: skip
    assert operating_points(rows)["score"].tolist() == [91.0]


def test_comparison_groups_give_one_figure_per_group(tmp_path):
    groups = comparison_groups([{"candidate": "a", "baseline": "a_static"}, {"candidate": "b", "baseline": "b_static"},
                                {"candidate": "b", "baseline": "b_other"}, {"candidate": "x", "baseline": "a_static"}])  # fmt: skip
    assert groups == [["b", "b_static", "b_other"], ["a", "a_static", "x"]]
    rows = results_frame([row(name, "digits_cnn", "static", "supervised", 90.0 + i, 1e5 * (i + 1))
                          for i, name in enumerate(["a--lam0.5", "a_static", "b", "b_static", "lonely"])])  # fmt: skip
    names = sorted(p.stem for p in make_figures("s", rows, tmp_path, latency_files=[], groups=groups) if p.suffix == ".png")
    assert [n.rsplit("_", 1)[-1] for n in names] == ["a", "b", "other"]


def test_an_experiment_in_no_comparison_joins_the_figure_of_those_that_start_from_it():
    from benchmarks.suites import figure_groups

    groups = figure_groups("d2nn-fmnist")
    cascade = next(g for g in groups if "fmnist_cascade" in g)
    assert "fmnist_cascade_confidence" in cascade  # the parent of the calibrated points
    assert figure_groups("quick") is None  # one comparison group: one figure
