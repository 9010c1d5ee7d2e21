"""Global unstructured magnitude pruning: sparsity, honest cost labels, no-op at amount 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from baselines.pruning.magnitude import NOT_A_SPEEDUP, magnitude_prune, sparse_cost
from baselines.static.cifar_resnet import CifarResNet
from benchmarks.errors import ConfigError
from benchmarks.registry import create_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cifar_resnet20", num_classes=10).eval()


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])


@pytest.mark.parametrize("amount", [0.5, 0.9])
def test_global_ranking_zeroes_the_smallest_weights(amount):
    model = _model()
    pruned = magnitude_prune(model, amount)
    before, after = _weights(model), _weights(pruned)
    num_zero = round(amount * before.numel())
    assert int((after == 0).sum()) == num_zero
    threshold = before.abs().sort().values[num_zero - 1]
    assert after[after != 0].abs().min() >= threshold
    kept = after != 0
    assert torch.equal(after[kept], before[kept])  # surviving weights untouched
    assert set(pruned.state_dict()) == set(model.state_dict())  # masks folded in
    assert pruned.arch_config == model.arch_config


def test_amount_zero_changes_nothing():
    model = _model()
    same = magnitude_prune(model, 0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_cost_reports_dense_macs_as_executed_and_nonzero_macs_as_not_a_speedup():
    model = _model()
    x = torch.zeros(1, 3, 32, 32)
    dense = sparse_cost(model, x)
    assert dense.macs_dense == dense.macs_nonzero == 40_551_040
    pruned = magnitude_prune(model, 0.8)
    cost = sparse_cost(pruned, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pruned(x)
    assert cost.macs_dense == counter.get_total_flops() // 2 == 40_551_040  # what runs is dense
    # global ranking prunes the wide late layers most, and they run on small maps
    assert 0.2 * cost.macs_dense < cost.macs_nonzero < 0.5 * cost.macs_dense
    assert cost.weight_sparsity == pytest.approx(0.8, abs=1e-6)
    report = cost.as_dict()
    assert report["speedup"] == 1.0 and "NOT a speed-up" in report["note"] == NOT_A_SPEEDUP


def test_nonzero_macs_weight_each_layer_by_its_output_positions():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # one nonzero weight
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    cost = sparse_cost(model, torch.zeros(1, 1, 4, 4))
    assert cost.macs_dense == 18 * 16 + 32 * 3
    assert cost.macs_nonzero == 1 * 16 + 32 * 3


def test_non_permanent_pruning_keeps_torch_masks_for_fine_tuning():
    pruned = magnitude_prune(CifarResNet(20), 0.5, permanent=False)
    assert any(name.endswith("weight_mask") for name, _ in pruned.named_buffers())


def test_bad_input():
    with pytest.raises(ConfigError, match=r"amount must be in \[0, 1\)"):
        magnitude_prune(_model(), 1.5)
    with pytest.raises(ConfigError, match="batch of 1"):
        sparse_cost(_model(), torch.zeros(2, 3, 32, 32))
