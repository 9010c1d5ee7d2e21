"""ConvNet-AIG: convolutional networks with adaptive inference graphs (Veit & Belongie, ECCV
2018).

* [paper] Every residual block has a gate that reads the block's input: global average
  pooling, a small two-layer network (`Linear(C, 16) -> BN -> ReLU -> Linear(16, 2)`), giving
  the logits of "skip" and "execute". Training samples a hard decision with the Gumbel-Softmax
  straight-through estimator (temperature 1); at inference the decision is the larger logit
  (no noise). The loss is cross-entropy plus the target-rate loss, the mean over blocks of
  (execution rate over the batch − t)², so the target t sets the operating point.
* [paper] A skipped block passes its input on through the shortcut (`block_skipping`).
* [decision] Every block is gated, downsampling ones included (their skip path is the
  shortcut alone); the gates start open: the "execute" logit's bias is `open_bias` (2.0), so a
  fresh model on a trained backbone starts near the backbone (about 88% of decisions "execute"
  with standard Gumbel noise).
* Gates are controllers (`benchmarks.routing.mark_controller`): their MACs are reported as
  `macs_controller`. The inference decision is `decide_threshold(execute − skip, 0)`, so traces
  record its margin.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.dynamic.block_skipping import BlockSkippingResNet
from benchmarks.registry import create_model, register_model
from benchmarks.routing import decide_threshold, mark_controller

__all__ = ["AIGGate", "ConvNetAIG"]

PAPER = "Veit & Belongie, Convolutional Networks with Adaptive Inference Graphs (ECCV 2018)"
PAPER_URL = "https://arxiv.org/abs/1711.11503"


class AIGGate(nn.Module):
    """The gate of one block: pooled input -> Linear -> BN -> ReLU -> Linear -> (skip, execute) logits."""

    def __init__(self, in_channels: int, hidden: int = 16, open_bias: float = 2.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.0, float(open_bias)]))
        mark_controller(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(torch.flatten(self.pool(x), 1)))))


class ConvNetAIG(BlockSkippingResNet):
    """A ResNet with an AIG gate on every block.

    In training mode the forward pass samples straight-through Gumbel decisions and keeps them
    in `gate_values` (one (N,) tensor per block, differentiable) for the target-rate loss.
    """

    def __init__(self, backbone: nn.Module, hidden: int = 16, temperature: float = 1.0, open_bias: float = 2.0):
        super().__init__(backbone)
        if not temperature > 0:
            raise ValueError(f"the Gumbel-Softmax temperature must be > 0, got {temperature}")
        self.gates = nn.ModuleList(AIGGate(self.block_in_channels(i), hidden, open_bias) for i in range(self.num_blocks))
        self.temperature = float(temperature)
        self.gate_values: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gate_values.clear()
        h = self.stem(x)
        for i in range(self.num_blocks):
            logits = self.gates[i](h)
            if self.training:
                keep = F.gumbel_softmax(logits, tau=self.temperature, hard=True)[:, 1]
                self.gate_values.append(keep)
            else:
                keep = decide_threshold(logits[:, 1] - logits[:, 0], 0.0, unit=f"gates.{i}")
            h = self.run_block(i, h, keep)
        return self.classify(h)

    def execution_rates(self) -> torch.Tensor:
        """Per block, the batch's execution rate in the last training forward (differentiable)."""
        if not self.gate_values:
            raise RuntimeError("execution_rates needs a training-mode forward pass first")
        return torch.stack([g.mean() for g in self.gate_values])


def _aig(backbone: str, num_classes: int, in_chans: int, hidden: int, temperature: float, open_bias: float,
         **kwargs) -> ConvNetAIG:  # fmt: skip
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return ConvNetAIG(net, hidden, temperature, open_bias)


_VARIANT = "ConvNet-AIG gates on every block of {}"


@register_model("convnet_aig_cifar_resnet20", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-20 (option A)"), datasets=("cifar10", "fashion-mnist", "digits"),
                tags=("convnet-aig", "mode:aig", "base:cifar_resnet20"))  # fmt: skip
def convnet_aig_cifar_resnet20(num_classes: int = 10, in_chans: int = 3, hidden: int = 16, temperature: float = 1.0,
                               open_bias: float = 2.0, **kwargs) -> ConvNetAIG:  # fmt: skip
    return _aig("cifar_resnet20", num_classes, in_chans, hidden, temperature, open_bias, **kwargs)


@register_model("convnet_aig_cifar_resnet110", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-110 (option A)"), datasets=("cifar10",),
                tags=("convnet-aig", "mode:aig", "base:cifar_resnet110"))  # fmt: skip
def convnet_aig_cifar_resnet110(num_classes: int = 10, in_chans: int = 3, hidden: int = 16, temperature: float = 1.0,
                                open_bias: float = 2.0, **kwargs) -> ConvNetAIG:  # fmt: skip
    return _aig("cifar_resnet110", num_classes, in_chans, hidden, temperature, open_bias, **kwargs)


@register_model("convnet_aig_resnet50", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("torchvision ResNet-50"), datasets=("imagenet",),
                tags=("convnet-aig", "mode:aig", "base:resnet50"))  # fmt: skip
def convnet_aig_resnet50(num_classes: int = 1000, in_chans: int = 3, hidden: int = 16, temperature: float = 1.0,
                         open_bias: float = 2.0, **kwargs) -> ConvNetAIG:  # fmt: skip
    return _aig("resnet50", num_classes, in_chans, hidden, temperature, open_bias, **kwargs)
