"""Early-exit baseline (BranchyNet / SDN): the execution contract (engines agree, batch
invariance, later blocks never run for a sample that left, ICs counted as controllers), the
backbone it is built on, and its method (joint loss, calibration on val within a budget)."""

from __future__ import annotations

import pytest
import torch

from baselines.dynamic.early_exit import NEVER, EarlyExitResNet, confidence
from benchmarks.config import resolve_config
from benchmarks.data import load_split
from benchmarks.engine import Trainer, get_method, load_selected_model
from benchmarks.errors import ConfigError
from benchmarks.registry import create_model, get_model_spec, list_models
from benchmarks.routing import set_engine, trace


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_split("digits", "test").images[:48]


def split_exits(digits: torch.Tensor, seed: int = 0) -> EarlyExitResNet:
    """A seeded ResNet-20 early-exit network whose thresholds send about a third of the
    samples out at each internal exit (each at the matching quantile of its confidences)."""
    torch.manual_seed(seed)
    model = create_model("early_exit_cifar_resnet20", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        scores = [confidence(z, model.criterion) for z in model.exit_logits(digits)]
    first = float(scores[0].quantile(2 / 3))
    later = scores[1][scores[0] < first]
    model.thresholds = [first, float(later.quantile(0.5))]
    return model


def _run(model, x, engine):
    set_engine(model, engine)
    with torch.no_grad(), trace() as t:
        logits = model(x)
    return logits, t


def test_three_depths_are_registered_as_dynamic_models_on_their_backbones():
    assert list_models("early_exit_*") == ["early_exit_cifar_resnet110", "early_exit_cifar_resnet20", "early_exit_cifar_resnet56"]
    for name in list_models("early_exit_*"):
        spec = get_model_spec(name)
        assert spec.kind == "dynamic" and spec.base == name.replace("early_exit_", "")
    model = create_model("early_exit_cifar_resnet56", num_classes=10)
    assert model.exit_after == [8, 17] and len(model.heads) == 2  # after stages 1 and 2


@pytest.mark.parametrize("kwargs, message", [
    ({"exits": [5, 3]}, "increasing block indices"),
    ({"exits": [8]}, r"in \[0, 7\]"),
    ({"thresholds": [0.5]}, "one value per exit"),
    ({"thresholds": [0.5, float("nan")]}, "finite"),
    ({"criterion": "margin"}, "criterion must be one of"),
])  # fmt: skip
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("early_exit_cifar_resnet20", num_classes=10, in_chans=1, **kwargs)


def test_engines_agree_and_each_sample_pays_exactly_its_path(digits):
    model = split_exits(digits)
    masked, tm = _run(model, digits, "masked")
    sparse, ts = _run(model, digits, "sparse")
    torch.testing.assert_close(masked, sparse, rtol=1e-5, atol=1e-5)
    costs = model.exit_path_macs(digits)
    exits_taken = {int(m) for m in ts.macs_executed}
    assert exits_taken == set(costs)  # samples left at every exit
    assert torch.equal(ts.macs_executed, ts.macs_theoretical)  # the sparse engine skips for real
    assert (tm.macs_executed >= ts.macs_executed).all()
    assert (ts.macs_controller > 0).all()  # the ICs that ran are controllers


def test_routing_of_a_sample_does_not_depend_on_its_batch(digits):
    model = split_exits(digits)
    set_engine(model, "sparse")
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), trace() as whole:
        shuffled = model(digits[order])
    for i in range(0, len(digits), 7):
        with torch.no_grad(), trace() as alone:
            one = model(digits[i : i + 1])
        j = int((order == i).nonzero())
        torch.testing.assert_close(one[0], shuffled[j], rtol=1e-5, atol=1e-5)
        assert int(alone.macs_executed[0]) == int(whole.macs_executed[j])


def test_later_blocks_never_run_for_a_sample_that_left(digits):
    model = split_exits(digits)
    set_engine(model, "sparse")
    seen: list[int] = []
    last = model.blocks[-1]
    handle = last.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            model(digits)
    finally:
        handle.remove()
    with torch.no_grad():
        scores = [confidence(z, model.criterion) for z in model.exit_logits(digits)]
    stayed = (scores[0] < model.thresholds[0]) & (scores[1] < model.thresholds[1])
    assert seen == [int(stayed.sum())] and 0 < seen[0] < len(digits)


def test_a_never_exiting_network_is_its_backbone(digits):
    torch.manual_seed(0)
    static = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    model = create_model("early_exit_cifar_resnet20", num_classes=10, in_chans=1).eval()
    model.load_backbone_state(static.state_dict())
    assert model.thresholds == [NEVER, NEVER]
    logits, t = _run(model, digits, "sparse")
    with torch.no_grad():
        torch.testing.assert_close(logits, static(digits), rtol=0, atol=0)
    assert model.backbone_macs(digits) == int(t.macs_executed[0]) - int(t.macs_controller[0])
    with pytest.raises(KeyError, match="does not fit"):
        model.load_backbone_state(create_model("cifar_resnet56", num_classes=10, in_chans=1).state_dict())


# --- the method ---------------------------------------------------------------------------------


def _cfg(**changes):
    base = {"name": "ee", "model": {"name": "early_exit_cifar_resnet20"},
            "dataset": {"name": "digits"}, "method": "early_exit", "seeds": [0],
            "train": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.005}}}  # fmt: skip
    return resolve_config({**base, **changes})


def test_the_loss_is_the_weighted_sum_of_every_exits_cross_entropy(digits):
    method = get_method("early_exit")(_cfg(method_args={"exit_weights": [0.5, 1.0, 2.0]}))
    model = method.build_model(method.info).train()
    targets = load_split("digits", "test").targets[:48]
    from benchmarks.engine.method import StepContext

    (stage,) = method.stages()
    loss, logs = method.loss(model, digits, targets, StepContext(stage, 0, 0, 1))
    parts = [torch.nn.functional.cross_entropy(z, targets) for z in model.exit_logits(digits)]
    torch.testing.assert_close(loss, 0.5 * parts[0] + parts[1] + 2.0 * parts[2])
    assert {"exit0_accuracy", "exit1_accuracy"} <= set(logs)


@pytest.mark.parametrize("changes, message", [
    ({"method_args": {"exit_weights": [1.0, 1.0]}}, "needs 3 values"),
    ({"method_args": {"exit_weights": [1.0, -1.0, 1.0]}}, "numbers >= 0"),
    ({"method_args": {"macs_fraction": 0}}, r"must be in \(0, 1\]"),
    ({"method_args": {"macs_fraction": 1.5}}, r"must be in \(0, 1\]"),
    ({"method_args": {"grid": [0.9, 0.5]}}, "must be increasing"),
    ({"method_args": {"head_lr_mult": 0}}, "head_lr_mult' must be a number > 0"),
    ({"method_args": {"init": "experiment:x"}, "stages": [{"name": "calibrate", "epochs": 1}]}, "trains nothing"),
    ({"stages": [{"name": "calibrate", "epochs": 0}]}, "needs 'method_args.init'"),
    ({"model": {"name": "cifar_resnet20"}}, "not one"),
])  # fmt: skip
def test_bad_method_input_is_one_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        method = get_method("early_exit")(_cfg(**changes))
        method.stages()
        method.build_model(method.info)


@pytest.mark.slow
def test_training_then_calibration_on_val_keeps_each_budget(tmp_path):
    from benchmarks.engine.batches import eval_batches

    first = Trainer(_cfg(), 0, runs_root=tmp_path, progress=False, log=lambda m: None)
    first.fit()
    val = load_split("digits", "val")
    ratios = []
    for budget in (0.8, 0.9, 1.0):
        cfg = _cfg(name=f"ee_cal{budget}", method_args={"init": str(first.run.path), "macs_fraction": budget},
                   stages=[{"name": "calibrate", "epochs": 0}])  # fmt: skip
        trainer = Trainer(cfg, 0, runs_root=tmp_path, progress=False, log=lambda m: None)
        trainer.fit()
        model = load_selected_model(trainer.run)
        metrics = trainer.method.evaluate(model.eval(), eval_batches(val, 128))
        costs = model.exit_path_macs(val.images[:1])
        assert metrics["macs"] <= budget * costs[-1] + 1e-6  # within the budget on val
        ratios.append(metrics["macs"])
    assert ratios == sorted(ratios)
