"""The baseline recipes (benchmarks/configs/baselines/*.yaml) load, say what the papers say,
and chain: a pruning recipe starts from its base recipe's finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.pruning.l1_filter import TABLE1
from benchmarks.config import CONFIG_ROOT, find_config, load_config
from benchmarks.engine import Trainer, get_method, load_selected_model
from benchmarks.engine.batches import num_train_batches
from benchmarks.errors import CheckpointError
from benchmarks.runs import single_seed_config

RECIPES = sorted((CONFIG_ROOT / "baselines").glob("*.yaml"))
HE_RECIPES = [p for p in RECIPES if p.stem in {f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110)}]
L1_RECIPES = [p for p in RECIPES if "_l1_" in p.stem]


def test_the_recipes_are_there():
    assert len(HE_RECIPES) == 5 and len(L1_RECIPES) == len(TABLE1)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_recipe_loads_and_its_method_accepts_it(path: Path, quick: bool):
    cfg = load_config(path, quick=quick)
    assert cfg["name"] == path.stem and cfg["suite"] == "baselines"
    paper_dataset = path.stem.split("_")[0].replace("fmnist", "fashion-mnist")  # cifar10_..., imagenet_..., fmnist_...
    assert cfg["dataset"]["name"] == ("digits" if quick else paper_dataset)
    method = get_method(cfg["method"])(single_seed_config(cfg, 0))
    assert method.stages()
    if quick:
        assert all(stage.epochs == 1 for stage in method.stages())


@pytest.mark.parametrize("path", HE_RECIPES, ids=[p.stem for p in HE_RECIPES])
def test_he_et_al_recipe(path: Path):
    train = load_config(path)["train"]
    assert train["batch_size"] == 128 and train["augment"] == "crop_flip"
    assert train["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    schedule = train["scheduler"]
    assert schedule["unit"] == "iterations" and schedule["milestones"] == [32000, 48000]
    steps = num_train_batches(45_000, 128)  # the cifar10 train split
    assert (train["epochs"] - 1) * steps < 64_000 <= train["epochs"] * steps


@pytest.mark.parametrize("path", L1_RECIPES, ids=[p.stem for p in L1_RECIPES])
def test_li_et_al_fine_tune_recipe(path: Path):
    cfg = load_config(path)
    variant = TABLE1[path.stem.replace("cifar10_", "cifar_")]
    assert cfg["method"] == "l1_filter" and cfg["model"]["name"] == variant.base
    assert [s["args"] for s in cfg["stages"]] == [{"prune": variant.model_id}]
    assert cfg["train"]["epochs"] == 40 and cfg["train"]["optimizer"]["lr"] == 0.001
    assert cfg["train"]["scheduler"] == {"name": "constant"}
    base = load_config(find_config(cfg["method_args"]["init"].removeprefix("experiment:")))
    assert base["model"]["name"] == variant.base


def test_pruning_recipe_needs_its_base_run_first(tmp_path):
    cfg = load_config(find_config("baselines/cifar10_resnet56_l1_a"), quick=True,
                      overrides=[f"method_args.runs_root={tmp_path}"])
    with pytest.raises(CheckpointError, match="dynbench train baselines/cifar10_resnet56"):
        Trainer(cfg, seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None).fit()


@pytest.mark.slow
def test_quick_chain_base_then_l1_variant(tmp_path):
    """quick ResNet-56 on digits, finished like `dynbench train` does, then its L1-A pruning."""
    from benchmarks.evaluation import finalize_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny maps: one thread is much faster on a shared CPU
    try:
        base_cfg = load_config(find_config("baselines/cifar10_resnet56"), quick=True)
        base = Trainer(base_cfg, seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
        base.fit()
        finalize_run(base.run, cost=False)
        cfg = load_config(find_config("baselines/cifar10_resnet56_l1_a"), quick=True,
                          overrides=[f"method_args.runs_root={tmp_path}"])
        pruned = Trainer(cfg, seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
        pruned.fit()
    finally:
        torch.set_num_threads(threads)
    model = load_selected_model(pruned.run)
    assert model.arch_config == {"name": "cifar_resnet56_l1_a", "kwargs": {"num_classes": 10, "in_chans": 1}}
    assert [b.conv1.out_channels for b in model.blocks] == TABLE1["cifar_resnet56_l1_a"].widths()
