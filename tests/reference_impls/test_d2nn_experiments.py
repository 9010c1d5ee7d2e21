"""D2NN experiments through the shared pipeline: the task of the dataset options, λ sweeps as
data, equal budgets in the CPU suite, the val-calibrated confidence cascade, and the paper
datasets (LFW-B, ILSVRC-10) end to end on tiny fixture data in their real on-disk formats."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.config import CONFIG_ROOT, find_config, load_config, resolve_config
from benchmarks.data import dataset_info
from benchmarks.engine import Trainer, get_method, load_selected_model
from benchmarks.errors import ConfigError
from benchmarks.registry import get_model_spec
from benchmarks.runs import RunFolder
from benchmarks.sweeps import expand
from reference_impls.d2nn import D2NN
from tests.benchmarks.fixtures_data import (
    ilsvrc10_recipe,
    lfw_b_recipe,
    make_image_folder,
    make_lfw,
    use_source,
)

D2NN_CONFIGS = sorted((CONFIG_ROOT / "d2nn").glob("*.yaml"))
DESIGNS = [p for p in D2NN_CONFIGS if load_config(p)["method"] == "d2nn" and load_config(p).get("sweep")]


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


# --- sweeps and budgets ------------------------------------------------------------------------


@pytest.mark.parametrize("path", DESIGNS, ids=lambda p: p.stem)
def test_every_design_sweeps_lambda_as_data(path):
    points = expand(load_config(path))
    lams = [p["method_args"]["lam"] for p in points]
    assert len(points) >= 5 and len(set(lams)) == len(lams)
    assert isinstance(get_model_spec(points[0]["model"]["name"]).builder(), D2NN)
    assert len({RunFolder.for_config({**p, "seed": 0}).path.name for p in points}) == len(points)
    if load_config(path)["dataset"]["name"] == "fashion-mnist":  # the CPU study: dense where routing changes
        assert sum(0.9 <= lam <= 0.999 for lam in lams) >= 5 and max(lams) >= 0.99


# --- the val-calibrated confidence cascade -----------------------------------------------------


def _confidence_configs(init: str, macs_fraction: float) -> tuple[dict, dict]:
    common = {"model": {"name": "d2nn_cascade_confidence", "kwargs": {"width": 8, "last_stride": 1}},
              "dataset": {"name": "digits"}, "seeds": [0], "select": {"metric": "val_accuracy", "mode": "max"}}  # fmt: skip
    parent = resolve_config({**common, "name": "conf", "method": "d2nn",
                             "train": {"epochs": 4, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.005}},
                             "stages": [{"name": "pretrain", "epochs": 4, "select": True}]})  # fmt: skip
    child = resolve_config({**common, "name": f"conf_cal{macs_fraction}", "method": "d2nn_confidence",
                            "method_args": {"init": init, "macs_fraction": macs_fraction},
                            "train": {"epochs": 1}, "stages": [{"name": "calibrate", "epochs": 0}]})  # fmt: skip
    return parent, child


@pytest.mark.slow
def test_confidence_thresholds_are_calibrated_on_val_within_the_budget(tmp_path):
    from benchmarks.data import load_split
    from benchmarks.engine.batches import eval_batches

    parent, _ = _confidence_configs("", 1.0)
    first = Trainer(parent, 0, runs_root=tmp_path, progress=False, log=_quiet)
    first.fit()
    parent_run = first.run
    val = load_split("digits", "val")
    fractions = {}
    for budget in (0.3, 0.6, 1.0):
        _, child = _confidence_configs(str(parent_run.path), budget)
        trainer = Trainer(child, 0, runs_root=tmp_path, progress=False, log=_quiet)
        trainer.fit()
        model = load_selected_model(trainer.run)
        thresholds = model.arch_config["kwargs"]["thresholds"]
        assert len(thresholds) == 3 and model.arch_config["name"] == "d2nn_cascade_confidence"
        metrics = trainer.method.evaluate(model.eval(), eval_batches(val, 128))
        fractions[budget] = metrics["macs_ratio"]
        assert metrics["macs_ratio"] <= budget + 1e-6  # on val, where it was calibrated
    assert fractions[0.3] <= fractions[0.6] <= fractions[1.0]


def test_confidence_calibration_refuses_training_a_missing_parent_and_an_empty_budget():
    _, child = _confidence_configs("experiment:x", 0.5)
    with pytest.raises(ConfigError, match="trains nothing"):
        get_method("d2nn_confidence")({**child, "stages": [{"name": "calibrate", "epochs": 1}]}).stages()
    with pytest.raises(ConfigError, match="needs 'method_args.init'"):
        get_method("d2nn_confidence")({**child, "method_args": {"macs_fraction": 0.5}})
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
        get_method("d2nn_confidence")({**child, "method_args": {"init": "experiment:x", "macs_fraction": 0}})


# --- the paper datasets end to end on fixture data ---------------------------------------------


@pytest.mark.slow
def test_the_d2nn_suite_runs_end_to_end_on_fixture_lfw_b_and_ilsvrc10(tmp_path, monkeypatch):
    from benchmarks.data.imagenet import ILSVRC10
    from benchmarks.data.lfw_b import LFWB
    from benchmarks.suites import reproduce

    make_lfw(tmp_path)
    lfw = LFWB(recipe=lfw_b_recipe(tmp_path, 12))
    make_image_folder(tmp_path, train_per_class=4, val_per_class=1, size=(48, 40))
    ilsvrc = ILSVRC10(recipe=ilsvrc10_recipe(tmp_path, train=2, val=1, test=1))
    for source in (lfw, ilsvrc):
        use_source(monkeypatch, source)
        source.prepare(tmp_path, download=False)
    report = reproduce("d2nn", out=tmp_path / "out", data_root=str(tmp_path), quick=True, log=_quiet, latency=False)
    rows = pd.read_csv(report.rows_file)
    test = rows[rows["split"] == "test"]
    names = set(test["experiment"])
    assert {"lfwb_highlow--lam0.5", "lfwb_highlow--lam0.9", "lfwb_cascade_static--stages4",
            "lfwb_cascade_confidence_calibrated--macs_fraction0.5", "ilsvrc10_hierarchical--lam0.9"} <= names  # fmt: skip
    assert test[test["dataset"] == "lfw-b"]["f1"].notna().all()
    d2nn = test[test["method"] == "d2nn"]
    assert (d2nn[d2nn["model"] != "d2nn_cascade_confidence"]["macs_controller_mean"] > 0).all()
    hier = load_selected_model(RunFolder(tmp_path / "out" / "runs" / next(
        p.name for p in (tmp_path / "out" / "runs").iterdir() if p.name.startswith("ilsvrc10_hierarchical--lam0.9"))))
    assert hier.arch_config["kwargs"]["hierarchy"] == [list(g) for _, g in dataset_info("ilsvrc10").hierarchy]
    comparisons = pd.read_csv(tmp_path / "out" / "tables" / "d2nn_comparisons.csv")
    assert "lfwb_cascade_static--stages4" in set(comparisons["baseline"])  # a swept baseline, point by point
    assert any(p.name.startswith("d2nn_accuracy_vs_macs_") and "lfwb-cascade" in p.name for p in report.figures)
