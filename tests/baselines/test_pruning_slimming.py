"""Network slimming (Liu et al. 2017): BN-scale penalty, global threshold, physical removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from baselines.pruning.slimming import (
    bn_l1_penalty,
    slim_mask,
    slim_prune,
    slimming_bns,
    slimming_keep,
    slimming_threshold,
)
from baselines.static.cifar_resnet import CifarResNet
from baselines.static.cifar_vgg import CifarVGG
from benchmarks.errors import ConfigError
from benchmarks.registry import create_model


def _with_scales(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct |γ| per channel (no ties) and non-trivial BN statistics, in float64."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_((torch.rand(n, generator=g) + 0.01) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0))
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.double().eval()


def _resnet() -> CifarResNet:
    torch.manual_seed(0)
    return _with_scales(CifarResNet(20))


def _vgg() -> CifarVGG:
    torch.manual_seed(0)
    return _with_scales(CifarVGG([16, 16, "M", 32, 32, "M", 32], classifier="slimming"))


def test_prunable_bns_are_block_internal_for_resnets_and_all_for_vgg():
    resnet, vgg = CifarResNet(20), _vgg()
    assert slimming_bns(resnet) == [b.bn1 for b in resnet.blocks]
    assert slimming_bns(vgg) == vgg.bns


def test_penalty_is_the_l1_norm_of_the_scales_and_its_gradient_is_the_sign():
    model = _resnet()
    penalty = bn_l1_penalty(model)
    expected = sum(b.bn1.weight.abs().sum() for b in model.blocks)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    block = model.blocks[4]
    torch.testing.assert_close(block.bn1.weight.grad, block.bn1.weight.sign())
    assert block.bn2.weight.grad is None  # block outputs are not penalised


@pytest.mark.parametrize("build", [_resnet, _vgg], ids=["resnet20", "vgg"])
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_global_threshold_removes_the_smallest_fraction(build, ratio):
    model = build()
    keep, threshold = slimming_keep(model, ratio)
    scales = torch.cat([bn.weight.detach().abs() for bn in slimming_bns(model)])
    total = scales.numel()
    assert sum(k.numel() for k in keep) == total - int(ratio * total)
    kept_scales = torch.cat([bn.weight.detach().abs()[k] for bn, k in zip(slimming_bns(model), keep, strict=True)])
    assert kept_scales.min() > threshold  # distinct scales: a clean global cut
    assert (scales <= threshold).sum() == int(ratio * total)
    assert slimming_threshold(model, ratio) == threshold


@pytest.mark.parametrize("build", [_resnet, _vgg], ids=["resnet20", "vgg"])
def test_pruned_equals_masked_original(build):
    model = build()
    pruned, masked = slim_prune(model, 0.5), slim_mask(model, 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), masked(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("build", [_resnet, _vgg], ids=["resnet20", "vgg"])
def test_ratio_zero_changes_nothing(build):
    model = build()
    keep, threshold = slimming_keep(model, 0.0)
    assert threshold is None and all(k.numel() == bn.num_features for k, bn in zip(keep, slimming_bns(model), strict=True))
    same = slim_prune(model, 0.0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))


def test_every_layer_keeps_a_channel():
    model = _vgg()
    with torch.no_grad():
        model.bns[1].weight.mul_(1e-6)  # this whole layer is below any global threshold
    keep, _ = slimming_keep(model, 0.5)
    assert keep[1].numel() == 1 and keep[1].item() == model.bns[1].weight.abs().argmax().item()
    pruned = slim_prune(model, 0.5)
    assert pruned.convs[1].out_channels == 1


def test_slimmed_vgg19_rebuilds_from_its_arch_config():
    model = create_model("cifar_vgg19", num_classes=100)
    _with_scales(model).float()
    pruned = slim_prune(model, 0.7)
    assert pruned.arch_config["name"] == "cifar_vgg19"
    rebuilt = create_model(pruned.arch_config["name"], **pruned.arch_config["kwargs"])
    rebuilt.load_state_dict(pruned.state_dict())
    widths = [v for v in pruned.arch_config["kwargs"]["cfg"] if v != "M"]
    assert sum(widths) == 5504 - int(0.7 * 5504)  # VGG-19 has 5,504 conv channels


def test_bad_input():
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        slim_prune(_resnet(), 1.0)
    with pytest.raises(ConfigError, match="supports the CIFAR ResNets"):
        bn_l1_penalty(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
