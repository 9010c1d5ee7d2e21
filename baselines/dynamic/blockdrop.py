"""BlockDrop: dynamic inference paths in residual networks (Wu, Nagarajan, Kumar, Rennie, Davis,
Grauman & Feris, CVPR 2018).

* [paper] A small policy network looks at the image once and outputs, for every residual block
  of a pre-trained ResNet, the probability of keeping it (a sigmoid per block). At inference a
  block is kept iff its probability is ≥ 0.5; dropped blocks pass their input on through the
  shortcut (`block_skipping`). Every block can be dropped, downsampling ones included.
* [paper] The policy network for CIFAR is a ResNet-8-style network (a 3×3 stem and one basic
  block per stage, widths 16/32/64) on the full image; for ImageNet the image is downsampled
  first (`policy_downsample`).
* [paper] Training: REINFORCE with the reward 1 − (kept blocks / K)² for a correct prediction
  and −γ otherwise, a self-critical baseline (the reward of the greedy policy on the same
  image), the probabilities bounded away from 0 and 1 while sampling (α = 0.8), a curriculum
  that first lets the policy decide only the last blocks, then joint fine-tuning of policy and
  ResNet (`baselines.dynamic.methods.BlockDropMethod`).
* Execution goes through `benchmarks.routing`: the policy network is a controller (its MACs are
  reported as `macs_controller`), the decisions are `decide_threshold(probabilities, 0.5)` (one
  unit, its margin the smallest over the blocks), and each block is routed on the rows that
  keep it, at any batch size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from baselines.dynamic.block_skipping import BlockSkippingResNet
from baselines.static.cifar_resnet import BasicBlock, conv3x3
from benchmarks.registry import create_model, register_model
from benchmarks.routing import decide_threshold, mark_controller

__all__ = ["BlockDrop", "PolicyNet"]

PAPER = "Wu et al., BlockDrop: Dynamic Inference Paths in Residual Networks (CVPR 2018)"
PAPER_URL = "https://arxiv.org/abs/1711.08393"


class PolicyNet(nn.Module):
    """ResNet-8-style policy: stem, one basic block per stage (widths w, 2w, 4w), pooling, a
    linear layer with one output per backbone block, sigmoid."""

    def __init__(self, in_chans: int, num_blocks: int, width: int = 16, downsample: int = 1):
        super().__init__()
        if downsample < 1:
            raise ValueError(f"policy_downsample must be >= 1, got {downsample}")
        self.resize = nn.AvgPool2d(downsample) if downsample > 1 else nn.Identity()
        self.stem = nn.Sequential(conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.body = nn.Sequential(
            BasicBlock(width, width), BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 4 * width, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_blocks)
        self.num_blocks = num_blocks
        mark_controller(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.stem(self.resize(x)))
        return torch.sigmoid(self.fc(torch.flatten(self.pool(h), 1)))


class BlockDrop(BlockSkippingResNet):
    """A ResNet whose blocks a policy network keeps or drops, per image, before the ResNet runs.

    `forward` is the greedy policy (inference); training calls `policy(x)` and
    `execute(x, keep)` with sampled decisions.
    """

    def __init__(self, backbone: nn.Module, in_chans: int = 3, policy_width: int = 16, policy_downsample: int = 1):
        super().__init__(backbone)
        self.policy = PolicyNet(in_chans, self.num_blocks, policy_width, policy_downsample)

    def execute(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The ResNet with block i run on the rows where `keep[:, i]` (N, K) is true."""
        if keep.dim() != 2 or keep.shape[1] != self.num_blocks:
            raise ValueError(f"BlockDrop: keep must be (N, {self.num_blocks}), got {tuple(keep.shape)}")
        h = self.stem(x)
        for i in range(self.num_blocks):
            h = self.run_block(i, h, keep[:, i])
        return self.classify(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = decide_threshold(self.policy(x), 0.5, unit="policy")
        return self.execute(x, keep)

    def load_policy_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a policy network's weights (`policy.` keys of a BlockDrop checkpoint, or bare);
        a policy trained for a backbone with another number of blocks is refused."""
        state = {k.removeprefix("policy."): v for k, v in state.items() if not k.startswith(("stem.", "blocks.", "fc.", "pool."))}
        theirs = state.get("fc.weight")
        if theirs is not None and theirs.shape[0] != self.num_blocks:
            raise ValueError(
                f"the policy network decides {theirs.shape[0]} blocks, but this backbone has {self.num_blocks}"
            )
        self.policy.load_state_dict(state)


def _blockdrop(backbone: str, num_classes: int, in_chans: int, policy_width: int, policy_downsample: int,
               **kwargs) -> BlockDrop:  # fmt: skip
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return BlockDrop(net, in_chans, policy_width, policy_downsample)


_VARIANT = "BlockDrop policy (ResNet-8 style) over every block of {}"


@register_model("blockdrop_cifar_resnet20", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-20 (option A)"), datasets=("cifar10", "fashion-mnist", "digits"),
                tags=("blockdrop", "mode:policy", "base:cifar_resnet20"))  # fmt: skip
def blockdrop_cifar_resnet20(num_classes: int = 10, in_chans: int = 3, policy_width: int = 16,
                             policy_downsample: int = 1, **kwargs) -> BlockDrop:  # fmt: skip
    return _blockdrop("cifar_resnet20", num_classes, in_chans, policy_width, policy_downsample, **kwargs)


@register_model("blockdrop_cifar_resnet110", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
                variant=_VARIANT.format("CIFAR ResNet-110 (option A)"), datasets=("cifar10",),
                tags=("blockdrop", "mode:policy", "base:cifar_resnet110"))  # fmt: skip
def blockdrop_cifar_resnet110(num_classes: int = 10, in_chans: int = 3, policy_width: int = 16,
                              policy_downsample: int = 1, **kwargs) -> BlockDrop:  # fmt: skip
    return _blockdrop("cifar_resnet110", num_classes, in_chans, policy_width, policy_downsample, **kwargs)
