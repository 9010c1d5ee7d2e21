"""LC-Net's training method: config validation, backbone loading, the loss, the CPU driver's
subsets, and the bundled experiment files."""

from __future__ import annotations

import pytest
import torch

from benchmarks.config import CONFIG_ROOT, load_config, resolve_config
from benchmarks.data import dataset_info, load_split
from benchmarks.engine import get_method, save_weights
from benchmarks.engine.method import StepContext
from benchmarks.errors import CheckpointError, ConfigError
from benchmarks.registry import create_model
from reference_impls.lcnet.method import LCNetMethod, resolve_backbone_checkpoint
from reference_impls.lcnet.model import LCNet


def _cfg(**overrides) -> dict:
    data = {
        "name": "t",
        "model": {"name": "lcnet_lc_cifar_resnet20"},
        "dataset": {"name": "digits"},
        "method": "lcnet",
        "method_args": {"rho": 0.5, "beta": 2.0},
        "train": {"epochs": 1, "batch_size": 16, "amp": False, "channels_last": False},
    }
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return resolve_config(data)


def test_method_is_registered():
    assert get_method("lcnet") is LCNetMethod


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("method_args.lambda", 1.0, "unknown key 'lambda'"),
        ("method_args.rho", "half", "must be a number"),
        ("method_args.beta", -1.0, "must be >= 0"),
        ("method_args.cost_estimate", "exact", "cost_estimate"),
    ],
)
def test_bad_method_args_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        LCNetMethod(_cfg(**{key: value}))


def test_builds_on_the_data_layers_padded_input():
    """`dataset.options.pad_to` is the data layer's: the model sees 1×32×32 digits."""
    cfg = _cfg(**{"dataset.options": {"pad_to": 32}})
    info = dataset_info("digits", cfg["dataset"]["options"])
    model = LCNetMethod(cfg).build_model(info)
    x = load_split("digits", "val", options=cfg["dataset"]["options"]).images[:4]
    assert x.shape[1:] == (1, 32, 32) and info.input_shape == (1, 32, 32)
    model.eval()(x)
    assert model.macs_full == create_model("lcnet_lc_cifar_resnet20", num_classes=10, in_chans=1).full_macs((32, 32))


def _static_checkpoint(tmp_path):
    torch.manual_seed(1)
    static = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    with torch.no_grad():
        for p in static.parameters():
            p.add_(0.01)
    run = tmp_path / "run"
    save_weights(static, run / "checkpoints" / "best")
    return static, run


def test_start_stage_loads_the_static_backbone(tmp_path):
    reference, run = _static_checkpoint(tmp_path)
    for where in (run, run / "checkpoints" / "best.safetensors", run / "checkpoints" / "best"):
        method = LCNetMethod(_cfg(**{"method_args.backbone": str(where)}))
        model = method.build_model(dataset_info("digits"))
        stage = method.stages()[0]
        model = method.start_stage(model, stage, dataset_info("digits"))
        assert model.engine == "masked"  # training computes everything
        for key, value in reference.state_dict().items():
            assert torch.equal(model.backbone_state_dict()[key], value), key


def test_missing_or_unfitting_backbone_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a finished run folder"):
        resolve_backbone_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_backbone_checkpoint(tmp_path / "nothing.safetensors")
    _, run = _static_checkpoint(tmp_path)
    method = LCNetMethod(_cfg(**{"method_args.backbone": str(run), "model.name": "lcnet_lc_cifar_resnet56"}))
    model = method.build_model(dataset_info("digits"))
    with pytest.raises(CheckpointError, match="does not fit"):
        method.start_stage(model, method.stages()[0], dataset_info("digits"))


def test_experiment_backbone_names_the_static_run_folder(tmp_path):
    cfg = load_config(CONFIG_ROOT / "lcnet" / "cifar10_resnet56_lc_rho50.yaml")
    assert cfg["method_args"]["backbone"] == "experiment:baselines/cifar10_resnet56"
    with pytest.raises(CheckpointError, match="cifar10_resnet56-s0-"):
        resolve_backbone_checkpoint(cfg["method_args"]["backbone"], seed=0, runs_root=tmp_path)


def test_loss_is_cross_entropy_plus_the_cost_term():
    torch.manual_seed(0)
    method = LCNetMethod(_cfg(**{"method_args.cost_estimate": "soft"}))
    model = method.build_model(dataset_info("digits")).train()
    stage = method.stages()[0]
    method.start_stage(model, stage, dataset_info("digits"))
    split = load_split("digits", "train")
    x, y = split.images[:16], split.targets[:16]
    ctx = StepContext(stage, 0, 0, 10)
    loss, logs = method.loss(model, x, y, ctx)
    ratio = model.expected_macs("soft").mean() / model.macs_full
    assert float(loss.detach()) == pytest.approx(float(logs["ce"]) + 2.0 * (float(ratio.detach()) - 0.5) ** 2, rel=1e-5)
    assert float(logs["macs_ratio_est"]) == pytest.approx(float(ratio.detach()))
    loss.backward()
    assert all(p.grad is not None for h in model.heads() for p in h.parameters())


def test_ste_cost_estimate_is_the_executed_cost_forward():
    torch.manual_seed(0)
    method = LCNetMethod(_cfg())
    assert method.cost_estimate == "ste"  # the default (see docs/lcnet.md)
    model = method.build_model(dataset_info("digits"))
    method.start_stage(model, method.stages()[0], dataset_info("digits"))
    split = load_split("digits", "train")
    _, logs = method.loss(model.train(), split.images[:16], split.targets[:16], StepContext(method.stages()[0], 0, 0, 10))
    assert float(logs["macs_ratio_est"]) == pytest.approx(float(logs["macs_ratio"]))


def test_backbone_stage_trains_the_plain_network():
    torch.manual_seed(0)
    cfg = _cfg(stages=[{"name": "backbone", "args": {"gating": False}}, {"name": "lcnet"}])
    method = LCNetMethod(cfg)
    model = method.build_model(dataset_info("digits"))
    first, second = method.stages()
    method.start_stage(model, first, dataset_info("digits"))
    split = load_split("digits", "train")
    loss, logs = method.loss(model.train(), split.images[:16], split.targets[:16], StepContext(first, 0, 0, 10))
    assert not model.gating and "macs_ratio" not in logs and float(loss) == pytest.approx(float(logs["ce"]))
    method.start_stage(model, second, dataset_info("digits"))
    assert model.gating
    typo = LCNetMethod(_cfg(stages=[{"name": "s", "args": {"gate": False}}]))
    with pytest.raises(ConfigError, match="unknown key 'gate'"):
        typo.start_stage(model, typo.stages()[0], dataset_info("digits"))


def test_evaluate_reports_the_executed_cost_ratio():
    torch.manual_seed(0)
    method = LCNetMethod(_cfg())
    model = method.build_model(dataset_info("digits")).eval()
    split = load_split("digits", "val")
    metrics = method.evaluate(model, iter([(split.images[:32], split.targets[:32])]))
    assert 0 < metrics["macs_ratio"] <= 1.01 and model.engine == "sparse"  # engine restored


def test_every_bundled_lcnet_config_validates():
    files = sorted((CONFIG_ROOT / "lcnet").glob("*.yaml"))
    assert len(files) >= 20
    for path in files:
        for quick in (False, True):
            cfg = load_config(path, quick=quick)
            get_method(cfg["method"])(cfg)
            assert cfg["suite"] == "lcnet", path
    rhos = {load_config(p)["method_args"].get("rho") for p in files if "resnet56_lc_" in p.name}
    assert rhos == {0.9, 0.7, 0.5, 0.3, 0.2, 0.1}


@pytest.mark.slow
def test_quick_digits_experiment_runs_through_the_trainer(tmp_path):
    from benchmarks.engine import Trainer, load_selected_model

    cfg = load_config(
        CONFIG_ROOT / "lcnet" / "digits_resnet20_lc.yaml",  # (the quick override would replace the stages)
        overrides=[
            "stages=[{name: backbone, epochs: 1, select: false, args: {gating: false}}, {name: lcnet, epochs: 1}]",
            "dataset.options={train_subset: 256}",
        ],
    )
    trainer = Trainer(cfg, 0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    summary = trainer.fit()
    assert summary["selected"]["stage"] == "lcnet"
    model = load_selected_model(trainer.run)
    assert isinstance(model, LCNet) and model.gating and "val_macs_ratio" in summary["selected"]["metrics"]


def test_selection_keeps_the_best_epoch_within_the_cost_band_of_rho():
    from benchmarks.engine.loop import selection_rank

    cfg = resolve_config({"name": "t", "model": {"name": "lcnet_lc_cifar_resnet20"}, "dataset": {"name": "digits"},
                          "method": "lcnet", "method_args": {"rho": 0.5}, "train": {"epochs": 3}})  # fmt: skip
    method = get_method("lcnet")(cfg)
    (stage,) = method.stages()
    band = method.selection_band(stage)
    assert band == ("val_macs_ratio", pytest.approx(0.45), pytest.approx(0.55))
    epochs = [{"val_accuracy": 90.0, "val_macs_ratio": 0.80},  # most accurate, far off its target
              {"val_accuracy": 85.0, "val_macs_ratio": 0.53},
              {"val_accuracy": 86.0, "val_macs_ratio": 0.49}]  # fmt: skip
    ranks = [selection_rank(e["val_accuracy"], "max", e, band) for e in epochs]
    assert min(range(3), key=lambda i: ranks[i]) == 2
    outside = [{"val_accuracy": 90.0, "val_macs_ratio": 0.80}, {"val_accuracy": 70.0, "val_macs_ratio": 0.60}]
    assert min(outside, key=lambda e: selection_rank(e["val_accuracy"], "max", e, band))["val_macs_ratio"] == 0.60
    assert selection_rank(90.0, "max", {}, None) < selection_rank(85.0, "max", {}, None)  # no band: the metric
    plain = get_method("lcnet")({**cfg, "stages": [{"name": "backbone", "args": {"gating": False}}]})
    assert plain.selection_band(plain.stages()[0]) is None
