"""FBS: feature boosting and suppression (Gao, Zhao, Dudziak, Mullins & Xu, "Dynamic Channel
Pruning: Feature Boosting and Suppression", ICLR 2019).

* [paper] Before a convolution runs, a small predictor reads the layer's input and predicts a
  saliency for each output channel: the input's channels are globally subsampled (their mean
  absolute value), then a linear layer and a ReLU. A winner-take-all keeps the k = ⌈d · C⌉
  most salient channels (d: the density); the kept channels are computed and scaled by their
  saliency ("boosting"), the others are not computed ("suppression"), and neither is the next
  convolution's share of them.
* [paper] Training: cross-entropy plus λ times the L1 norm of the saliencies (a lasso that
  makes the predictions sparse), from a pre-trained network.
* [decision] On a residual network the predictor gates each block's inner channels: the first
  convolution's outputs (with its BatchNorm and ReLU), and so the second convolution's matching
  inputs, as LC-Net's C-Net does. The convolution that feeds the residual sum and the stem are
  not gated, so d is (up to the predictors' own MACs) the fraction of each block's MACs kept.
* [decision] The predictor's bias starts at 1 and its weights small (N(0, 0.01)), so that a
  fresh model on a trained backbone scales the kept channels by about 1.
* Execution goes through `benchmarks.routing`: the decision is `decide_topk(saliency, k)`
  (exactly k channels per sample; its margin is the gap between the k-th and (k+1)-th
  saliency), the convolutions are `GatedConv2d` (the sparse engine computes only the kept
  channels, and the second convolution only the matching inputs), and the predictors are
  controllers (`macs_controller`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from benchmarks.backbones import BackboneKeys, WrapsBackbone, shortcut_of, split_resnet
from benchmarks.oracle import basic_block_plan, channel_groups, run_basic_block
from benchmarks.registry import create_model, register_model
from benchmarks.routing import DynamicModule, GatedConv2d, decide_topk, gated_pair, mark_controller

__all__ = ["FBSBlock", "FBSResNet", "SaliencyPredictor", "kept_channels"]

PAPER = "Gao et al., Dynamic Channel Pruning: Feature Boosting and Suppression (ICLR 2019)"
PAPER_URL = "https://arxiv.org/abs/1810.05331"


def kept_channels(density: float, channels: int) -> int:
    """k = ⌈density · channels⌉, the channels FBS keeps of a layer."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"FBS density must be in (0, 1], got {density!r}")
    return max(1, min(channels, math.ceil(density * channels - 1e-9)))


class SaliencyPredictor(nn.Module):
    """Channel saliency from a layer's input: mean |x| per channel -> Linear -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)
        with torch.no_grad():
            nn.init.normal_(self.fc.weight, std=0.01)
            self.fc.bias.fill_(1.0)
        mark_controller(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.abs().mean((2, 3))))


class FBSBlock(DynamicModule):
    """A residual block whose first convolution's output channels FBS chooses per sample."""

    def __init__(self, block: nn.Module, density: float):
        super().__init__()
        if hasattr(block, "conv3"):
            raise TypeError("FBS here gates basic blocks (conv1 -> conv2); bottleneck blocks are not supported")
        self.conv1 = GatedConv2d(block.conv1, block.bn1, nn.ReLU())
        self.conv2 = GatedConv2d(block.conv2, block.bn2)
        self.shortcut = shortcut_of(block)
        self.predictor = SaliencyPredictor(block.conv1.in_channels, block.conv1.out_channels)
        self.k = kept_channels(density, block.conv1.out_channels)
        self.density = float(density)
        #: the saliencies of the last forward (for the lasso term)
        self.saliency: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.predictor(x)
        keep = decide_topk(s, self.k, unit=f"{self.__dict__.get('_dynbench_prefix') or 'fbs'}.wta")
        gate = s * keep.to(s.dtype)  # kept channels boosted or suppressed by their saliency
        self.saliency[:] = [s]
        y = gated_pair(self.conv1, self.conv2, x, gate)  # conv2 reads the kept channels only
        return torch.relu(y + self.shortcut(x))

    def extra_repr(self) -> str:
        return f"density={self.density}, k={self.k}/{self.conv1.out_channels}"


class FBSResNet(WrapsBackbone, DynamicModule):
    """A ResNet whose basic blocks are FBS blocks of one density; loads the static backbone's
    checkpoint (`load_backbone_state`)."""

    def __init__(self, backbone: nn.Module, density: float = 0.5):
        super().__init__()
        kept_channels(density, 1)  # a clear message for a density outside (0, 1]
        keys = BackboneKeys.of(backbone)
        stem, stages, pool, fc, _ = split_resnet(backbone, who="FBS")
        self.stem = stem
        self.blocks = nn.ModuleList(FBSBlock(b, density) for stage in stages for b in stage)
        self.pool, self.fc = pool, fc
        self.density = float(density)
        self._backbone_keys = BackboneKeys(keys, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.fc(torch.flatten(self.pool(h), 1))

    def static_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain backbone: every channel, no predictor."""
        h = self.stem(x)
        for b in self.blocks:
            y = b.conv2(b.conv1(h))
            h = torch.relu(y + b.shortcut(h))
        return self.fc(torch.flatten(self.pool(h), 1))

    @torch.no_grad()
    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The latency harness's oracle for `x` (DESIGN §4): the model decides now (its own
        forward: every block's saliencies and top-k choice), and the returned function runs
        the backbone with those channels and scales fixed and no predictor, one sliced
        convolution pair per channel pattern (`benchmarks.oracle`)."""
        plans = []
        h = self.stem(x)
        for block in self.blocks:
            s = block.predictor(h)  # what the block's forward computes first, on the same input
            keep = decide_topk(s, block.k, unit="oracle")
            plans.append(basic_block_plan(None, channel_groups(keep, s)))
            h = block(h)

        def forward() -> torch.Tensor:
            out = self.stem(x)
            for block, plan in zip(self.blocks, plans, strict=True):
                out = run_basic_block(block, out, plan)
            return self.fc(torch.flatten(self.pool(out), 1))

        return forward

    def saliencies(self) -> list[torch.Tensor]:
        """Every block's saliencies (N, C) of the last forward."""
        return [s for b in self.blocks for s in b.saliency]

    def predictors(self) -> list[nn.Module]:
        return [b.predictor for b in self.blocks]



def _fbs(backbone: str, num_classes: int, in_chans: int, density: float, **kwargs) -> FBSResNet:
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return FBSResNet(net, density)


_VARIANT = "FBS channel saliency (winner-take-all) on the inner channels of every block of {}"


@register_model("fbs_cifar_resnet20", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-20 (option A)"), datasets=("cifar10", "fashion-mnist", "digits"),
                tags=("fbs", "mode:channels", "base:cifar_resnet20"))  # fmt: skip
def fbs_cifar_resnet20(num_classes: int = 10, in_chans: int = 3, density: float = 0.5, **kwargs) -> FBSResNet:
    return _fbs("cifar_resnet20", num_classes, in_chans, density, **kwargs)


@register_model("fbs_cifar_resnet56", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-56 (option A)"), datasets=("cifar10",),
                tags=("fbs", "mode:channels", "base:cifar_resnet56"))  # fmt: skip
def fbs_cifar_resnet56(num_classes: int = 10, in_chans: int = 3, density: float = 0.5, **kwargs) -> FBSResNet:
    return _fbs("cifar_resnet56", num_classes, in_chans, density, **kwargs)


@register_model("fbs_cifar_resnet110", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-110 (option A)"), datasets=("cifar10",),
                tags=("fbs", "mode:channels", "base:cifar_resnet110"))  # fmt: skip
def fbs_cifar_resnet110(num_classes: int = 10, in_chans: int = 3, density: float = 0.5, **kwargs) -> FBSResNet:
    return _fbs("cifar_resnet110", num_classes, in_chans, density, **kwargs)
