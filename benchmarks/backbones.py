"""Static ResNets as the backbone of a dynamic model: their parts, and their weights.

Every method that gates a ResNet per block or per channel (LC-Net, SkipNet, BlockDrop,
ConvNet-AIG, FBS, early exit) takes the modules of a static network built through the registry,
rearranges them, and must still load that network's trained checkpoint. This module holds the
two pieces they share, so that each method file holds only its own mechanism:

* `split_resnet(backbone)`: (stem, blocks per stage, pool, classifier, family) of a CIFAR ResNet
  of `baselines.static` (`stem`, `stages`, `fc`) or a torchvision ResNet (`conv1` ... `layer4`);
  `shortcut_of(block)` is a block's shortcut module in either family.
* `BackboneKeys`: the backbone's state_dict keys of the wrapping model's tensors, matched by
  tensor identity when the wrapper is built (the modules moved, the tensors did not), so that
  `load` takes a static checkpoint and `export` gives one back. `WrapsBackbone` gives a model
  that sets `self._backbone_keys` the two methods the engine calls.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["BackboneKeys", "ResNetParts", "WrapsBackbone", "shortcut_of", "split_resnet"]

ResNetParts = tuple[nn.Module, list[list[nn.Module]], nn.Module, nn.Linear, str]


def split_resnet(backbone: nn.Module, *, who: str = "this model") -> ResNetParts:
    """(stem, blocks per stage, pool, classifier, family) of a supported ResNet; `family` is
    `cifar` or `torchvision`."""
    if hasattr(backbone, "stem") and hasattr(backbone, "stages") and hasattr(backbone, "fc"):
        return backbone.stem, [list(stage) for stage in backbone.stages], backbone.pool, backbone.fc, "cifar"
    if all(hasattr(backbone, a) for a in ("conv1", "bn1", "maxpool", "layer1", "layer4", "fc")):
        stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        stages = [list(getattr(backbone, f"layer{i}")) for i in range(1, 5)]
        return stem, stages, backbone.avgpool, backbone.fc, "torchvision"
    raise TypeError(
        f"{who} wraps the CIFAR ResNets of baselines.static or torchvision ResNets, got a "
        f"{type(backbone).__name__}"
    )


def shortcut_of(block: nn.Module) -> nn.Module:
    """The shortcut of a residual block: `shortcut` (CIFAR) or `downsample` (torchvision, the
    identity where it is None)."""
    if hasattr(block, "shortcut"):
        return block.shortcut
    down = getattr(block, "downsample", None)
    return down if isinstance(down, nn.Module) else nn.Identity()


class BackboneKeys:
    """My state_dict key -> the backbone's, for every tensor the wrapper took from it."""

    def __init__(self, backbone_keys: dict[int, str], wrapper: nn.Module):
        self.keys = {k: backbone_keys[id(t)] for k, t in wrapper.state_dict(keep_vars=True).items() if id(t) in backbone_keys}

    @staticmethod
    def of(backbone: nn.Module) -> dict[int, str]:
        """Tensor identity -> key, taken before the backbone's modules are rearranged."""
        return {id(t): k for k, t in backbone.state_dict(keep_vars=True).items()}

    def load(self, wrapper: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy a static backbone's state_dict into `wrapper`; KeyError names what does not fit."""
        expected = set(self.keys.values())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"backbone state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        own = wrapper.state_dict()
        for mine, theirs in self.keys.items():
            if own[mine].shape != state[theirs].shape:
                raise KeyError(
                    f"backbone tensor '{theirs}' has shape {tuple(state[theirs].shape)}, "
                    f"expected {tuple(own[mine].shape)}"
                )
        with torch.no_grad():
            for mine, theirs in self.keys.items():
                own[mine].copy_(state[theirs])

    def export(self, wrapper: nn.Module) -> dict[str, torch.Tensor]:
        """The backbone weights of `wrapper` under the backbone's own keys."""
        own = wrapper.state_dict()
        return {theirs: own[mine] for mine, theirs in self.keys.items()}


class WrapsBackbone:
    """Mixin of a model built from a static backbone's modules (it sets `_backbone_keys` in
    its __init__): loads that backbone's checkpoint and gives its weights back."""

    _backbone_keys: BackboneKeys

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a trained static backbone's state_dict (its own keys); the controllers keep
        theirs. KeyError names what does not fit."""
        self._backbone_keys.load(self, state)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone weights under the backbone's own keys."""
        return self._backbone_keys.export(self)
