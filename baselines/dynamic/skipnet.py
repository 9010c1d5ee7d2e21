"""SkipNet: learning dynamic routing in convolutional networks (Wang, Yu, Dou, Darrell &
Gonzalez, ECCV 2018).

* [paper] A gate before each residual block decides from the block's input whether to run it;
  a skipped block passes its input on through the shortcut (`block_skipping`). The recurrent
  gate (RNNGate) is one LSTM shared by all blocks: each block's input is globally average
  pooled, projected to the LSTM's input size by a 1×1 convolution (one per stage, since the
  width changes), and the LSTM's hidden state gives the probability of executing through a
  linear layer and a sigmoid. At inference a block runs iff that probability is ≥ 0.5.
* [paper] Training is two-stage: supervised pre-training with soft gates (the block's output is
  blended with its shortcut by the probability), then hybrid reinforcement learning: the
  decisions are sampled, the network learns the cross-entropy of the sampled path, and the
  gates learn by REINFORCE with the reward "correctness minus α × computation"
  (`baselines.dynamic.methods.SkipNetMethod`).
* [paper, from the official code] The first block of the network always runs; every other
  block is gated, downsampling ones included. LSTM hidden size 10, projection size 10.
* [decision] The feed-forward gates of the paper (FFGate-I/II) are not built; the RNNGate is
  the one the paper's CIFAR-10 figures use for SkipNet+HRL.
* Execution goes through `benchmarks.routing`; the gate is a controller (its MACs, the
  projections, the LSTM cell and the output layer, are reported as `macs_controller`) and the
  decision is `decide_threshold(p, 0.5)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from baselines.dynamic.block_skipping import BlockSkippingResNet
from benchmarks.registry import create_model, register_model
from benchmarks.routing import decide_threshold, mark_controller

__all__ = ["POLICIES", "RNNGate", "SkipNet"]

PAPER = "Wang et al., SkipNet: Learning Dynamic Routing in Convolutional Networks (ECCV 2018)"
PAPER_URL = "https://arxiv.org/abs/1711.09485"
#: how a training-mode forward decides: soft (blend by the probability: supervised
#: pre-training) or sample (Bernoulli decisions: hybrid RL)
POLICIES = ("soft", "sample")


class RNNGate(nn.Module):
    """SkipNet's recurrent gate: a 1×1 projection of the pooled block input (one per input
    width), an LSTM cell shared by every block, a linear layer and a sigmoid."""

    def __init__(self, widths: list[int], embed: int = 10, hidden: int = 10, open_bias: float = 2.0):
        super().__init__()
        self.widths = sorted(set(widths))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.ModuleList(nn.Conv2d(w, embed, kernel_size=1) for w in self.widths)
        self.lstm = nn.LSTMCell(embed, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():  # [decision] gates start open on a trained backbone
            self.out.bias.fill_(float(open_bias))
        mark_controller(self)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(probability of executing the next block (N,), the new LSTM state)."""
        z = self.project[self.widths.index(x.shape[1])](self.pool(x)).flatten(1)
        h, c = self.lstm(z, state)
        return torch.sigmoid(self.out(h)).squeeze(1), (h, c)


class SkipNet(BlockSkippingResNet):
    """A ResNet with SkipNet's recurrent gate before every block but the first.

    A training-mode forward follows `policy` (`soft` or `sample`) and keeps, per gated block,
    the probabilities in `probabilities` and the sampled decisions in `actions` (for the
    REINFORCE term).
    """

    def __init__(self, backbone: nn.Module, embed: int = 10, hidden: int = 10, open_bias: float = 2.0):
        super().__init__(backbone)
        self.gate = RNNGate([self.block_in_channels(i) for i in range(1, self.num_blocks)], embed, hidden, open_bias)
        self.policy = "sample"
        self.probabilities: list[torch.Tensor] = []
        self.actions: list[torch.Tensor] = []

    def set_policy(self, policy: str) -> SkipNet:
        if policy not in POLICIES:
            raise ValueError(f"SkipNet's training policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probabilities.clear()
        self.actions.clear()
        h = self.blocks[0](self.stem(x))
        state = None
        for i in range(1, self.num_blocks):
            p, state = self.gate(h, state)
            if not self.training:
                keep = decide_threshold(p, 0.5, unit=f"gate.{i}")
            elif self.policy == "soft":
                keep = p
            else:
                action = torch.bernoulli(p.detach())
                self.actions.append(action)
                keep = action.bool()
            self.probabilities.append(p)
            h = self.run_block(i, h, keep)
        return self.classify(h)


def _skipnet(backbone: str, num_classes: int, in_chans: int, embed: int, hidden: int, open_bias: float,
             **kwargs) -> SkipNet:  # fmt: skip
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return SkipNet(net, embed, hidden, open_bias)


_VARIANT = "SkipNet RNNGate on {} (every block but the first gated)"


@register_model("skipnet_cifar_resnet20", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-20 (option A)"), datasets=("cifar10", "fashion-mnist", "digits"),
                tags=("skipnet", "mode:rnn", "base:cifar_resnet20"))  # fmt: skip
def skipnet_cifar_resnet20(num_classes: int = 10, in_chans: int = 3, embed: int = 10, hidden: int = 10,
                           open_bias: float = 2.0, **kwargs) -> SkipNet:  # fmt: skip
    return _skipnet("cifar_resnet20", num_classes, in_chans, embed, hidden, open_bias, **kwargs)


@register_model("skipnet_cifar_resnet38", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-38 (option A)"), datasets=("cifar10",),
                tags=("skipnet", "mode:rnn", "base:cifar_resnet38"))  # fmt: skip
def skipnet_cifar_resnet38(num_classes: int = 10, in_chans: int = 3, embed: int = 10, hidden: int = 10,
                           open_bias: float = 2.0, **kwargs) -> SkipNet:  # fmt: skip
    return _skipnet("cifar_resnet38", num_classes, in_chans, embed, hidden, open_bias, **kwargs)


@register_model("skipnet_cifar_resnet74", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-74 (option A)"), datasets=("cifar10",),
                tags=("skipnet", "mode:rnn", "base:cifar_resnet74"))  # fmt: skip
def skipnet_cifar_resnet74(num_classes: int = 10, in_chans: int = 3, embed: int = 10, hidden: int = 10,
                           open_bias: float = 2.0, **kwargs) -> SkipNet:  # fmt: skip
    return _skipnet("cifar_resnet74", num_classes, in_chans, embed, hidden, open_bias, **kwargs)


@register_model("skipnet_cifar_resnet110", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-110 (option A)"), datasets=("cifar10",),
                tags=("skipnet", "mode:rnn", "base:cifar_resnet110"))  # fmt: skip
def skipnet_cifar_resnet110(num_classes: int = 10, in_chans: int = 3, embed: int = 10, hidden: int = 10,
                            open_bias: float = 2.0, **kwargs) -> SkipNet:  # fmt: skip
    return _skipnet("cifar_resnet110", num_classes, in_chans, embed, hidden, open_bias, **kwargs)
