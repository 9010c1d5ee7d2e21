"""Channel surgery shared by the structured pruning baselines (L1 filter pruning, slimming).

A *unit* is a conv layer whose output channels may be removed together with its BatchNorm
and the matching input channels of the layer that consumes them:

* CIFAR ResNet: the first conv of each residual block (`block.conv1` → `block.bn1` →
  `block.conv2`). The second conv feeds the residual sum and is never pruned here.
* CIFAR VGG: every conv (`convs[i]` → `bns[i]` → `convs[i + 1]`, or the first linear layer
  for the last conv: the global pool leaves one feature per channel).

`keep` lists, per unit, the sorted indices of the channels that survive (None: all).
`remove_channels` builds a physically smaller dense network with the surviving weights, so
the MACs saving is real; `zero_channels` returns the original network with the removed
channels' filters and BN affine parameters zeroed, which computes the same function (the
removed channels output exactly 0) and is what the tests compare against.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from baselines.static.cifar_resnet import CifarResNet
from baselines.static.cifar_vgg import CifarVGG
from benchmarks.errors import ConfigError

__all__ = ["prunable_units", "remove_channels", "unit_widths", "zero_channels"]

Keep = Sequence[torch.Tensor | None]


def _check_supported(model: nn.Module, what: str) -> None:
    if not isinstance(model, (CifarResNet, CifarVGG)):
        raise ConfigError(
            f"{what} supports the CIFAR ResNets (cifar_resnet*) and CIFAR VGGs (cifar_vgg*), "
            f"got a {type(model).__name__}"
        )


def prunable_units(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (conv, bn) pairs whose output channels structured pruning may remove, in order."""
    _check_supported(model, "channel pruning")
    if isinstance(model, CifarResNet):
        return [(block.conv1, block.bn1) for block in model.blocks]
    return list(zip(model.convs, model.bns, strict=True))


def unit_widths(model: nn.Module) -> list[int]:
    return [conv.out_channels for conv, _ in prunable_units(model)]


def _normalize_keep(model: nn.Module, keep: Keep) -> list[torch.Tensor]:
    units = prunable_units(model)
    if len(keep) != len(units):
        raise ConfigError(f"keep lists {len(keep)} units, the model has {len(units)}")
    out = []
    for i, ((conv, _), idx) in enumerate(zip(units, keep, strict=True)):
        n = conv.out_channels
        if idx is None:
            out.append(torch.arange(n))
            continue
        idx = torch.as_tensor(idx, dtype=torch.long).flatten().cpu()
        if idx.numel() == 0:
            raise ConfigError(f"unit {i}: at least one channel must be kept")
        if idx.min() < 0 or idx.max() >= n or len(set(idx.tolist())) != idx.numel():
            raise ConfigError(f"unit {i}: kept channels must be distinct indices in [0, {n})")
        out.append(idx.sort().values)
    return out


def _slices(model: nn.Module, keep: list[torch.Tensor]) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """state_dict key -> [(dim, kept indices), ...] for every tensor the surgery narrows."""
    names = {id(m): name for name, m in model.named_modules()}
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def cut(module: nn.Module, param: str, dim: int, idx: torch.Tensor) -> None:
        cuts.setdefault(f"{names[id(module)]}.{param}", []).append((dim, idx))

    def cut_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
        for param in ("weight", "bias", "running_mean", "running_var"):
            cut(bn, param, 0, idx)

    if isinstance(model, CifarResNet):
        for block, idx in zip(model.blocks, keep, strict=True):
            cut(block.conv1, "weight", 0, idx)
            cut_bn(block.bn1, idx)
            cut(block.conv2, "weight", 1, idx)
    else:
        convs, bns = model.convs, model.bns
        for i, idx in enumerate(keep):
            cut(convs[i], "weight", 0, idx)
            cut_bn(bns[i], idx)
            consumer = convs[i + 1] if i + 1 < len(convs) else model.classifier[0]
            cut(consumer, "weight", 1, idx)
    return cuts


def _pruned_arch_config(model: nn.Module, widths: list[int]) -> dict[str, Any] | None:
    """The registry description of the pruned network: the base id plus explicit widths."""
    arch = getattr(model, "arch_config", None)
    if arch is None:
        return None
    kwargs = dict(arch.get("kwargs", {}))
    if isinstance(model, CifarResNet):
        kwargs["mid_channels"] = widths
    else:
        widths_left = iter(widths)
        kwargs["cfg"] = [v if v == "M" else next(widths_left) for v in model.cfg]
    return {"name": arch["name"], "kwargs": kwargs}


def _rebuild(model: nn.Module, widths: list[int]) -> nn.Module:
    if isinstance(model, CifarResNet):
        return CifarResNet(
            model.depth,
            num_classes=model.num_classes,
            in_chans=model.stem[0].in_channels,
            shortcut=model.shortcut_option,
            mid_channels=widths,
        )
    widths_left = iter(widths)
    cfg = [v if v == "M" else next(widths_left) for v in model.cfg]
    hidden = model.classifier[0].out_features if model.classifier_kind == "li" else 512
    return CifarVGG(
        cfg,
        num_classes=model.classifier[-1].out_features,
        in_chans=model.convs[0].in_channels,
        classifier=model.classifier_kind,
        hidden=hidden,
    )


def remove_channels(model: nn.Module, keep: Keep) -> nn.Module:
    """A new, physically narrower network holding the kept channels' trained weights.

    The original is left untouched. The result is on the original's device and dtype, in the
    same train/eval mode, and carries an `arch_config` that `create_model` rebuilds.
    """
    _check_supported(model, "remove_channels")
    keep = _normalize_keep(model, keep)
    widths = [int(idx.numel()) for idx in keep]
    reference = next(model.parameters())
    pruned = _rebuild(model, widths)
    state = model.state_dict()
    for key, cuts in _slices(model, keep).items():
        tensor = state[key]
        for dim, idx in cuts:
            tensor = tensor.index_select(dim, idx.to(tensor.device))
        state[key] = tensor
    pruned.load_state_dict(state)
    pruned.to(device=reference.device, dtype=reference.dtype)
    pruned.train(model.training)
    arch = _pruned_arch_config(model, widths)
    if arch is not None:
        pruned.arch_config = arch
    return pruned


@torch.no_grad()
def zero_channels(model: nn.Module, keep: Keep) -> nn.Module:
    """A copy of `model` whose removed channels output exactly zero (same shapes as before).

    Zeroing the filter and the BN scale and shift makes the channel's BN output 0 whatever the
    running statistics, and ReLU(0) = 0: the consumer sees exactly what it sees after
    `remove_channels`.
    """
    _check_supported(model, "zero_channels")
    keep = _normalize_keep(model, keep)
    masked = copy.deepcopy(model)
    for (conv, bn), idx in zip(prunable_units(masked), keep, strict=True):
        removed = torch.ones(conv.out_channels, dtype=torch.bool)
        removed[idx] = False
        conv.weight[removed.to(conv.weight.device)] = 0
        bn.weight[removed.to(bn.weight.device)] = 0
        bn.bias[removed.to(bn.bias.device)] = 0
    return masked
