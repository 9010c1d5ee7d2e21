"""D2NN experiments: task mapping, configs and sweeps, the training-subset guard, tables and
figures, and the paper datasets (LFW-B, ILSVRC-10) end to end on tiny fixture data in their
real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.config import CONFIG_ROOT, find_config, load_config, resolve_config
from benchmarks.data import dataset_info
from benchmarks.engine import get_method, load_selected_model
from benchmarks.errors import ConfigError
from benchmarks.registry import get_model_spec
from reference_impls.d2nn import D2NN, sweep
from tests.benchmarks.fixtures_data import (
    ilsvrc10_recipe,
    lfw_b_recipe,
    make_image_folder,
    make_lfw,
    use_source,
)

D2NN_CONFIGS = sorted((CONFIG_ROOT / "d2nn").glob("*.yaml"))
PANELS = [p for p in D2NN_CONFIGS if load_config(p)["method"] == "d2nn" and "baselines" in load_config(p)["method_args"]]


def _quiet(message: str) -> None:
    pass


# --- the task ------------------------------------------------------------------------------


def test_the_methods_train_on_the_task_of_the_shared_dataset_options():
    cfg = load_config(find_config("d2nn/fmnist_cascade"))
    method = get_method("d2nn")(cfg)
    assert method.metric == "f1" and method.bag_size == 32 and method.lam == 0.9
    model = method.build_model(method.info)
    assert model.nodes["h4"][-1].out_features == 2  # bag vs rest
    hier = get_method("d2nn")(load_config(find_config("d2nn/fmnist_hierarchical")))
    assert hier.metric == "accuracy" and hier.bag_size == 1


def test_static_models_are_refused_by_the_d2nn_method():
    cfg = resolve_config({"name": "t", "model": {"name": "d2nn_highlow_high"}, "dataset": {"name": "digits"},
                          "method": "d2nn", "train": {"epochs": 1}})  # fmt: skip
    with pytest.raises(ConfigError, match="train static baselines with method 'd2nn_static'"):
        get_method("d2nn")(cfg).build_model(dataset_info("digits"))


# --- configs and sweeps ----------------------------------------------------------------------


def test_every_panel_names_existing_baselines_and_sweeps_at_least_five_lambdas():
    assert {load_config(p)["dataset"]["name"] for p in PANELS} >= {"fashion-mnist", "lfw-b", "ilsvrc10", "digits"}
    for path in PANELS:
        points = sweep.expand(path)
        assert len(points) >= 5, path.name
        assert all(isinstance(get_model_spec(c["model"]["name"]).builder(), D2NN) for c, _ in points[:1])
        for cfg, _ in points:
            assert "sweep" not in cfg["method_args"] and "baselines" not in cfg["method_args"]
        assert len({c["method_args"]["lam"] for c, _ in points}) == len(points)
        for baseline in sweep.baselines_of(path):
            for cfg, _ in sweep.expand(baseline):
                assert get_model_spec(cfg["model"]["name"]).kind in ("static", "dynamic")


def test_expand_labels_points_and_applies_quick_before_reading_the_sweep():
    path = find_config("d2nn/fmnist_cascade_static")
    points = sweep.expand(path)
    assert [label for _, label in points] == ["stages=1", "stages=2", "stages=3", "stages=4"]
    assert [c["model"]["kwargs"]["stages"] for c, _ in points] == [1, 2, 3, 4]
    quick = sweep.expand(find_config("d2nn/fmnist_cascade"), quick=True)
    assert [label for _, label in quick] == ["lam=0.5", "lam=0.9"]
    assert all(c["quick"] and c["dataset"]["options"]["train_subset"] == 256 for c, _ in quick)


def test_a_malformed_sweep_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodel: {name: d2nn_cascade}\ndataset: {name: digits}\nmethod: d2nn\n"
                    "method_args: {sweep: {method_args.lam: 0.5}}\ntrain: {epochs: 1}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="method_args.sweep' must map dotted config keys"):
        sweep.expand(path)


# --- tables and figure -----------------------------------------------------------------------


def test_front_and_interpolation():
    front = sweep._front([(0.2, 80.0), (0.5, 90.0), (0.4, 70.0), (1.0, 95.0), (0.9, 89.0)])
    assert front == [(0.2, 80.0), (0.5, 90.0), (1.0, 95.0)]
    assert sweep.interpolate(front, 0.35) == pytest.approx(85.0)
    assert sweep.interpolate(front, 0.75) == pytest.approx(92.5)
    assert sweep.interpolate(front, 1.0) == 95.0
    assert sweep.interpolate(front, 0.1) is None and sweep.interpolate(front, 1.2) is None


def _record(kind: str, point: str, macs_ratio: float, score: float, model: str = "d2nn_cascade") -> dict:
    return {"panel": "p", "dataset": "digits", "design": "d2nn_cascade", "kind": kind, "model": model,
            "point": point, "seed": 0, "metric": "accuracy", "score": score, "macs_mean": macs_ratio * 1000,
            "macs_controller_mean": 1.0, "macs_ratio": macs_ratio, "val_score": score, "val_macs_ratio": macs_ratio,
            "reference_macs": 1000, "config_hash": "h", "run_dir": "/tmp/run"}  # fmt: skip


def test_tables_comparison_and_figure_are_written(tmp_path):
    records = [
        _record("d2nn", "lam=0.5", 0.2, 80.0), _record("d2nn", "lam=0.9", 0.6, 90.0),
        _record("static", "stages=2", 0.4, 82.0, "d2nn_cascade_static"),
        _record("static", "stages=4", 1.0, 91.0, "d2nn_cascade_static"),
        _record("confidence", "t=0.9/0.9/0.9", 0.5, 84.0, "d2nn_cascade_confidence"),
    ]  # fmt: skip
    rows = {r["baseline"]: r for r in sweep.comparison(records)}
    assert rows["d2nn_cascade_static stages=2"]["difference"] == pytest.approx(85.0 - 82.0)
    assert rows["d2nn_cascade_static stages=4"]["difference"] is None  # beyond the sweep
    paths = sweep.write_tables(records, tmp_path, "t") + sweep.plot(records, tmp_path, "t")
    assert [p.name for p in paths] == ["t_points.csv", "t_points.md", "t_comparison.md", "t.png", "t.svg"]
    assert "| p | static | d2nn_cascade_static | stages=2 |" in (tmp_path / "t_points.md").read_text()
    assert (tmp_path / "t.png").stat().st_size > 1000 and not list(tmp_path.glob("*.tmp*"))


# --- the paper datasets end to end on fixture data ---------------------------------------------


@pytest.mark.slow
def test_lfw_b_cascade_panel_runs_end_to_end_on_fixture_crops(tmp_path, monkeypatch):
    from benchmarks.data.lfw_b import LFWB

    make_lfw(tmp_path)
    source = LFWB(recipe=lfw_b_recipe(tmp_path, 12))
    use_source(monkeypatch, source)
    source.prepare(tmp_path, download=False)
    records = sweep.run_panel(find_config("d2nn/lfwb_cascade"), runs_root=tmp_path / "runs", quick=True,
                              data_root=str(tmp_path), confidence_points=3, log=_quiet)  # fmt: skip
    kinds = [r["kind"] for r in records]
    assert kinds.count("d2nn") == 2 and kinds.count("static") == 2 and "confidence" in kinds
    for r in records:
        assert r["metric"] == "f1" and 0.0 <= r["score"] <= 100.0 and r["macs_mean"] > 0
    full = next(r for r in records if r["point"] == "stages=4")
    assert full["macs_ratio"] == pytest.approx(1.0, abs=1e-4)  # static full path = reference path
    d2nn = [r for r in records if r["kind"] == "d2nn"]
    assert all(r["macs_controller_mean"] > 0 for r in d2nn)
    paths = sweep.write_tables(records, tmp_path / "report", "lfwb") + sweep.plot(records, tmp_path / "report", "lfwb")
    assert all(p.is_file() for p in paths)
    from benchmarks.latency import LatencyConfig

    config = LatencyConfig(batch_sizes=(1, 4), threads=1, repeats=2, warmup_iters=1, warmup_s=0.0, min_time_s=0.0)
    latency = sweep.cascade_latency(records, tmp_path / "report", "lfwb", str(tmp_path), count=8, config=config)
    text = latency[1].read_text()
    assert "realization_ratio" in text and "| 4 | sparse |" in text and "| 1 | masked |" in text


@pytest.mark.slow
def test_ilsvrc10_hierarchical_panel_runs_end_to_end_on_a_fixture_image_tree(tmp_path, monkeypatch):
    from benchmarks.data.imagenet import ILSVRC10

    make_image_folder(tmp_path, train_per_class=4, val_per_class=1, size=(48, 40))
    source = ILSVRC10(recipe=ilsvrc10_recipe(tmp_path, train=2, val=1, test=1))
    use_source(monkeypatch, source)
    source.prepare(tmp_path, download=False)
    records = sweep.run_panel(find_config("d2nn/ilsvrc10_hierarchical"), runs_root=tmp_path / "runs", quick=True,
                              data_root=str(tmp_path), log=_quiet)  # fmt: skip
    assert [r["kind"] for r in records] == ["d2nn", "d2nn", "static", "static"]
    assert all(r["metric"] == "accuracy" for r in records)
    model = load_selected_model(sweep.RunFolder(Path(records[0]["run_dir"])))
    groups = [list(g) for _, g in dataset_info("ilsvrc10").hierarchy]
    assert model.arch_config["kwargs"]["hierarchy"] == groups  # taken from the dataset
    assert model.specs["root"].actions == 3
    static = next(r for r in records if r["model"] == "d2nn_hierarchical_static")
    assert static["macs_ratio"] == pytest.approx(1.0, abs=1e-4)
