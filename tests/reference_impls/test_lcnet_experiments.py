"""The CPU-sized LC-Net driver: its table logic, figure, sweep configs and test evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.engine import save_weights
from benchmarks.registry import create_model
from benchmarks.runs import RunFolder
from reference_impls.lcnet import experiments as ex


def _records():
    static = {"variant": "static", "rho": None, "accuracy": 85.0, "macs_mean": 40e6, "macs_controller_mean": 0.0, "test_samples": 10000, "run": "s"}
    rows = [static]
    for variant, points in {
        "lc": [(0.9, 84.8, 36e6), (0.7, 84.6, 28e6), (0.5, 83.0, 20e6)],
        "l": [(0.9, 85.1, 39e6), (0.7, 84.0, 30e6)],
        "l1": [(None, 84.7, 30e6)],
    }.items():
        for rho, acc, macs in points:
            rows.append({"variant": variant, "rho": rho, "accuracy": acc, "macs_mean": macs, "macs_controller_mean": 1e4, "test_samples": 10000, "run": f"{variant}{rho}"})
    return rows


def test_frame_orders_points_and_measures_against_static():
    frame = ex.sweep_frame(_records())
    assert list(frame["variant"]) == ["static", "l1", "l", "l", "lc", "lc", "lc"]
    lc = frame[frame["variant"] == "lc"]
    assert list(lc["rho"]) == [0.9, 0.7, 0.5]  # by decreasing MACs
    assert lc["macs_reduction"].tolist() == pytest.approx([40 / 36, 40 / 28, 2.0])
    assert lc["delta_vs_static"].tolist() == pytest.approx([-0.2, -0.4, -2.0])


def test_best_within_picks_the_largest_reduction_inside_the_tolerance():
    frame = ex.sweep_frame(_records())
    assert ex.best_within(frame, "lc")["rho"] == 0.7
    assert ex.best_within(frame, "l")["rho"] == 0.9
    assert ex.best_within(frame, "lc", tolerance=0.1) is None


def test_tables_and_figure_are_written(tmp_path):
    frame = ex.sweep_frame(_records())
    paths = ex.write_tables(frame, tmp_path) + ex.plot(frame, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "fmnist_resnet20_sweep.md").read_text()
    assert "LC-Net" in md and "L1-filter pruned" in md and "| 0.7 |" in md
    assert (tmp_path / "fmnist_resnet20_acc_vs_macs.svg").read_text().lstrip().startswith("<?xml")


def test_sweep_configs_are_distinct_runs():
    configs = [ex.variant_config(ex.FMNIST_VARIANTS["lc"], rho) for rho in ex.DEFAULT_RHOS]
    assert [c["method_args"]["rho"] for c in configs] == list(ex.DEFAULT_RHOS)
    names = {RunFolder.for_config({**c, "seed": 0}).path.name for c in configs}
    assert len(names) == len(ex.DEFAULT_RHOS)
    assert all(c["dataset"]["options"]["pad_to"] == 32 for c in configs)
    assert all(c["method_args"]["backbone"] == "experiment:baselines/fmnist_resnet20" for c in configs)


@pytest.mark.slow
def test_evaluate_test_checks_the_sparse_engine(tmp_path):
    """On digits: the masked count and the sparse batch-1 re-run agree, and the record says so."""
    from benchmarks.config import resolve_config

    cfg = resolve_config({
        "name": "t", "model": {"name": "lcnet_lc_cifar_resnet20"}, "dataset": {"name": "digits"},
        "method": "lcnet", "train": {"epochs": 1},
    })
    cfg["seed"] = 0
    run = RunFolder.for_config(cfg, tmp_path).create(cfg, {})
    torch.manual_seed(0)
    model = create_model("lcnet_lc_cifar_resnet20", num_classes=10, in_chans=1, gate_init=0.5)
    save_weights(model, run.checkpoint_dir / "best")
    record = ex.evaluate_test(run, limit=40, check_samples=10)
    assert record["test_samples"] == 40 and record["sparse_check_samples"] == 10
    assert 0 < record["macs_mean"] < model.full_macs((8, 8)) + 50_000 and not math.isnan(record["accuracy"])
    assert ex.evaluate_test(run, limit=40) == record  # cached
