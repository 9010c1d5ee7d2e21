"""The pruning methods run in the engine: train, prune at a stage start, fine-tune, checkpoint."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import torch.nn as nn

from baselines.pruning.l1_filter import L1PruneSpec, l1_prune
from baselines.static.cifar_vgg import CifarVGG
from benchmarks.config import resolve_config
from benchmarks.engine import Trainer, load_selected_model
from benchmarks.errors import CheckpointError, ConfigError

BASE = {
    "name": "prune-method",
    # A narrow VGG keeps these end-to-end runs to a few seconds; the surgery itself is
    # tested on the full architectures in test_pruning_l1/slimming.
    "model": {"name": "cifar_vgg16", "kwargs": {"cfg": [8, 8, "M", 16, 16]}},
    "dataset": {"name": "digits"},
    "train": {
        "epochs": 1,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "scheduler": {"name": "constant"},
    },
}



def _fit(tmp_path, method: str, stages: list[dict], method_args: dict | None = None) -> Trainer:
    data = copy.deepcopy(BASE)
    data.update(method=method, stages=stages, method_args=method_args or {})
    trainer = Trainer(resolve_config(data), seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    trainer.fit()
    return trainer


def test_l1_filter_prunes_a_trained_checkpoint_then_fine_tunes(tmp_path):
    base = _fit(tmp_path, "supervised", [{"name": "train"}])
    base_ckpt = base.run.checkpoint_dir / "best"
    trainer = _fit(
        tmp_path,
        "l1_filter",
        [{"name": "finetune", "optimizer": {"lr": 0.001}, "args": {"ratios": {1: 0.5, 4: 0.25}}}],
        method_args={"init": str(base_ckpt)},
    )
    model = load_selected_model(trainer.run)
    assert isinstance(model, CifarVGG)
    assert model.cfg == [4, 8, "M", 16, 12]
    assert model.arch_config == {"name": "cifar_vgg16", "kwargs": {"num_classes": 10, "in_chans": 1, "cfg": [4, 8, "M", 16, 12]}}
    # the pruning started from the trained weights: kept filters of an unpruned layer match
    from benchmarks.engine.checkpoint import build_from_checkpoint

    trained, _ = build_from_checkpoint(base_ckpt)
    assert list(pd.read_csv(trainer.run.metrics_log)["stage"]) == ["finetune"]
    pruned_start = l1_prune(trained, L1PruneSpec({1: 0.5, 4: 0.25}))
    assert pruned_start.cfg == model.cfg


def test_init_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        _fit(tmp_path, "l1_filter", [{"name": "finetune"}], method_args={"init": str(tmp_path / "missing")})
    with pytest.raises(CheckpointError, match="has no finished run"):
        _fit(tmp_path, "l1_filter", [{"name": "finetune"}],
             method_args={"init": "experiment:quick/digits_cnn", "runs_root": str(tmp_path)})
    with pytest.raises(ConfigError, match="unknown key 'sparsity' for method 'l1_filter'"):
        _fit(tmp_path, "l1_filter", [{"name": "finetune"}], method_args={"sparsity": 1e-4})


def test_network_slimming_adds_the_penalty_then_prunes(tmp_path):
    trainer = _fit(
        tmp_path,
        "network_slimming",
        [{"name": "sparse", "args": {"sparsity": 1e-4}}, {"name": "finetune", "args": {"prune_ratio": 0.5}}],
    )
    log = pd.read_csv(trainer.run.metrics_log)
    assert log.loc[0, "train_bn_l1"] > 0 and pd.isna(log.loc[1, "train_bn_l1"])
    model = load_selected_model(trainer.run)
    assert sum(v for v in model.cfg if v != "M") == 48 - 24


def test_magnitude_fine_tuning_keeps_pruned_weights_at_zero(tmp_path):
    trainer = _fit(tmp_path, "magnitude", [{"name": "train"}, {"name": "finetune", "args": {"amount": 0.6}}])
    model = load_selected_model(trainer.run)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert (weights == 0).float().mean().item() >= 0.6  # momentum and weight decay did not revive any


def test_unknown_stage_args_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'ratio'.*allowed: prune, ratios, strategy"):
        _fit(tmp_path, "l1_filter", [{"name": "finetune", "args": {"ratio": 0.5}}])
