"""L1-norm filter pruning (Li et al. 2017): Table 1 figures, surgery correctness, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import benchmarks.cost
from baselines.pruning.l1_filter import (
    TABLE1,
    L1PruneSpec,
    as_printed,
    kept_filters,
    l1_keep,
    l1_mask,
    l1_prune,
    resnet_l1_spec,
)
from baselines.static.cifar_resnet import CifarResNet
from baselines.static.cifar_vgg import CifarVGG
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.registry import create_model, get_model_spec, list_models


def count_macs(model: nn.Module, input_shape=(3, 32, 32)) -> int:
    return benchmarks.cost.count_macs(model, input_shape).macs


def count_params(model: nn.Module, batchnorm: bool = True) -> int:
    norms = (nn.BatchNorm1d, nn.BatchNorm2d)
    return sum(
        p.numel()
        for m in model.modules()
        if batchnorm or not isinstance(m, norms)
        for p in m.parameters(recurse=False)
    )


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


# --- Table 1 -----------------------------------------------------------------------------------


def test_every_table1_variant_is_registered_as_pruned():
    assert set(list_models(kind="pruned")) >= set(TABLE1)
    for name, variant in TABLE1.items():
        spec = get_model_spec(name)
        assert spec.kind == "pruned" and "Li et al." in spec.paper
        assert spec.paper_url == "https://arxiv.org/abs/1608.08710"
        assert f"base:{variant.base}" in spec.tags


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_table1_macs_and_params(name):
    """Our counts are within 1% of the printed figures and round to exactly the printed
    digits (MACs; parameters without BatchNorm, which the paper's column leaves out)."""
    variant = TABLE1[name]
    pruned, base = create_model(name), create_model(variant.base)
    macs, params = count_macs(pruned), count_params(pruned)
    assert abs(macs / float(variant.table_macs) - 1) < 0.01
    assert abs(params / float(variant.table_params) - 1) < 0.01
    assert as_printed(macs, variant.table_macs) == variant.table_macs
    assert as_printed(count_params(pruned, batchnorm=False), variant.table_params) == variant.table_params
    assert as_printed(count_macs(base), variant.table_base_macs) == variant.table_base_macs
    assert as_printed(count_params(base, batchnorm=False), variant.table_base_params) == variant.table_base_params


# Exact counts of our reading of the rule, reported in docs/baselines.md.
EXACT = {
    "cifar_resnet56_l1_a": (112_435_840, 773_336),
    "cifar_resnet56_l1_b": (90_907_264, 735_712),
    "cifar_resnet110_l1_a": (212_779_648, 1_688_522),
    "cifar_resnet110_l1_b": (155_124_352, 1_168_424),
    "cifar_vgg16_l1_a": (206_279_680, 5_397_034),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_table1_exact_counts(name):
    model = create_model(name)
    assert (count_macs(model), count_params(model)) == EXACT[name]


def test_rule_reading_kept_counts():
    assert [kept_filters(16, 0.1), kept_filters(32, 0.1), kept_filters(64, 0.1)] == [14, 28, 57]
    assert [kept_filters(16, 0.6), kept_filters(32, 0.3), kept_filters(32, 0.4), kept_filters(64, 0.3)] == [6, 22, 19, 44]
    assert kept_filters(10, 0.3) == 7  # 10 * 0.7 = 6.999... in floating point
    assert kept_filters(4, 0.99) == 1
    spec = resnet_l1_spec(56, (0.1, 0.1, 0.1), skip=(16, 20, 38, 54))
    assert sorted(spec.ratios) == [n for n in range(2, 56, 2) if n not in (16, 20, 38, 54)]
    widths = TABLE1["cifar_resnet56_l1_a"].widths()
    assert widths[7] == 16 and widths[9] == 32 and widths[18] == 64 and widths[26] == 64
    assert widths[0] == 14 and widths[10] == 28 and widths[19] == 57


# --- surgery ---------------------------------------------------------------------------------


def _resnet20(shortcut="A") -> CifarResNet:
    torch.manual_seed(0)
    return randomize_bn(CifarResNet(20, shortcut=shortcut)).double()


def _small_vgg() -> CifarVGG:
    torch.manual_seed(0)
    cfg = [16, 16, "M", 32, 32, "M", 32, 32]
    return randomize_bn(CifarVGG(cfg, num_classes=10, classifier="li", hidden=24)).double()


RESNET20_SPEC = resnet_l1_spec(20, (0.5, 0.3, 0.1), skip=(4,))
VGG_SPEC = L1PruneSpec({1: 0.5, 2: 0.25, 5: 0.5, 6: 0.5})


@pytest.mark.parametrize(
    "build,spec",
    [(_resnet20, RESNET20_SPEC), (lambda: _resnet20("B"), RESNET20_SPEC), (_small_vgg, VGG_SPEC),
     (_small_vgg, L1PruneSpec(VGG_SPEC.ratios, strategy="greedy"))],
    ids=["resnet20-A", "resnet20-B", "vgg", "vgg-greedy"],
)
def test_pruned_equals_masked_original(build, spec):
    model = build()
    pruned, masked = l1_prune(model, spec), l1_mask(model, spec)
    assert count_params(pruned) < count_params(model)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected, got = masked(x), pruned.eval()(x)
        assert not torch.allclose(masked(x), model(x))  # the pruning did change the function
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_pruned_resnet_is_physically_smaller():
    model = CifarResNet(20)
    pruned = l1_prune(model, RESNET20_SPEC)
    assert [b.conv1.out_channels for b in pruned.blocks] == [8, 16, 8, 22, 22, 22, 57, 57, 57]  # layer 4 = block 1 skipped
    assert count_macs(pruned) < count_macs(model)


@pytest.mark.parametrize("build", [_resnet20, _small_vgg], ids=["resnet20", "vgg"])
def test_ratio_zero_changes_nothing(build):
    model = build()
    spec = L1PruneSpec({layer: 0.0 for layer in ((2, 4, 6) if isinstance(model, CifarResNet) else (1, 2, 3))})
    for same in (l1_prune(model, L1PruneSpec({})), l1_prune(model, spec)):
        assert same.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values(), strict=True))
        x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(same.eval()(x), model(x))


def test_keeps_the_filters_with_the_largest_l1_norm():
    model = CifarResNet(20)
    with torch.no_grad():
        conv = model.blocks[0].conv1
        scale = torch.tensor([5.0, 1.0, 9.0, 0.5, 7.0, 3.0, 2.0, 8.0, 4.0, 6.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
        conv.weight.copy_(scale.view(-1, 1, 1, 1).expand_as(conv.weight))
    keep = l1_keep(model, L1PruneSpec({2: 0.5}))
    assert keep[0].tolist() == [0, 2, 4, 5, 6, 7, 8, 9]  # norms 9, 8, 7, 6, 5, 4, 3, 2: the 8 largest
    assert all(k is None for k in keep[1:])
    pruned = l1_prune(model, L1PruneSpec({2: 0.5}))
    torch.testing.assert_close(pruned.blocks[0].conv1.weight, model.blocks[0].conv1.weight[keep[0]])
    torch.testing.assert_close(pruned.blocks[0].conv2.weight, model.blocks[0].conv2.weight[:, keep[0]])
    torch.testing.assert_close(pruned.blocks[0].bn1.running_var, model.blocks[0].bn1.running_var[keep[0]])


def test_greedy_ranks_on_surviving_inputs_only():
    model = CifarVGG([4, 2], num_classes=3, hidden=5)
    with torch.no_grad():
        first, second = model.convs
        first.weight.copy_(torch.tensor([4.0, 3.0, 2.0, 1.0]).view(-1, 1, 1, 1).expand_as(first.weight))
        second.weight.zero_()
        second.weight[0, 3] = 10.0  # large only on an input channel the first layer loses
        second.weight[1, 0] = 1.0
    spec = {1: 0.5, 2: 0.5}
    assert l1_keep(model, L1PruneSpec(spec))[1].tolist() == [0]
    assert l1_keep(model, L1PruneSpec(spec, strategy="greedy"))[1].tolist() == [1]


# --- checkpoints ------------------------------------------------------------------------------


def test_table1_variant_checkpoint_round_trip(tmp_path):
    from benchmarks.engine.checkpoint import build_from_checkpoint, save_weights

    base = randomize_bn(create_model("cifar_resnet56", num_classes=10))
    pruned = l1_prune(base, "cifar_resnet56_l1_b")
    assert pruned.arch_config == {"name": "cifar_resnet56_l1_b", "kwargs": {"num_classes": 10}}
    save_weights(pruned, tmp_path / "pruned")
    loaded, _ = build_from_checkpoint(tmp_path / "pruned")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_custom_spec_checkpoint_rebuilds_from_base_id_and_widths():
    base = create_model("cifar_vgg16", num_classes=4, in_chans=1)
    pruned = l1_prune(base, L1PruneSpec({2: 0.5, 13: 0.75}))
    assert pruned.arch_config["name"] == "cifar_vgg16"
    cfg = pruned.arch_config["kwargs"]["cfg"]
    assert cfg[1] == 32 and cfg[-1] == 128 and cfg.count("M") == 4
    rebuilt = create_model(pruned.arch_config["name"], **pruned.arch_config["kwargs"])
    rebuilt.load_state_dict(pruned.state_dict())  # strict: same architecture


def test_option_b_base_is_not_named_as_the_option_a_variant():
    pruned = l1_prune(create_model("cifar_resnet56_b"), "cifar_resnet56_l1_a")
    assert pruned.arch_config["name"] == "cifar_resnet56_b"
    assert pruned.arch_config["kwargs"]["mid_channels"] == TABLE1["cifar_resnet56_l1_a"].widths()


# --- bad input ---------------------------------------------------------------------------------


def test_bad_specs_raise_clear_errors():
    model = CifarResNet(20)
    with pytest.raises(ConfigError, match="layer 3 is the second conv of block 0"):
        l1_prune(model, L1PruneSpec({3: 0.5}))
    with pytest.raises(ConfigError, match="layer 1 is the stem"):
        l1_prune(model, L1PruneSpec({1: 0.5}))
    with pytest.raises(ConfigError, match="layer 40 does not exist in ResNet-20"):
        l1_prune(model, L1PruneSpec({40: 0.5}))
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        L1PruneSpec({2: 1.0})
    with pytest.raises(ConfigError, match="strategy"):
        L1PruneSpec({2: 0.5}, strategy="random")
    with pytest.raises(UnknownNameError, match="cifar_resnet56_l1_a"):
        l1_prune(model, "cifar_resnet56_l1_c")
    with pytest.raises(ConfigError, match="supports the CIFAR ResNets"):
        l1_prune(nn.Sequential(nn.Conv2d(3, 4, 3)), L1PruneSpec({1: 0.5}))
