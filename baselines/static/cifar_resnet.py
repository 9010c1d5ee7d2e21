"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

A 3×3 stem conv with 16 filters, then three stages of `n` BasicBlocks with 16, 32 and 64
channels on 32×32, 16×16 and 8×8 maps (depth = 6n + 2), global average pooling and a linear
classifier. The first block of stages 2 and 3 halves the map with a stride-2 first conv.

Shortcuts where the dimensions change:

* option A (the paper's CIFAR choice, ids `cifar_resnet{20,32,44,56,110}`): the identity,
  subsampled by taking every other pixel, with zero channels appended. Parameter-free and
  MAC-free, so ResNet-56 costs exactly 125,485,696 MACs at 32×32.
* option B (ids `cifar_resnet{20,...}_b`): a 1×1 stride-2 projection conv followed by BN.

The structure is exposed for methods that work per block (LC-Net, SkipNet, BlockDrop, L1 filter
pruning, network slimming): `model.stem`, `model.stages` (one `nn.Sequential` of blocks per
stage) and `model.blocks` (all blocks in order). Each `BasicBlock` has `conv1/bn1/conv2/bn2`,
a `shortcut` module, `downsample` (True where the block changes the map size or width) and
`residual(x)`, the branch before the addition.

`mid_channels` sets the width of each block's inner layer (conv1's filters), so the same class
describes the L1-pruned and slimmed networks of `baselines.pruning`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.registry import register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ZeroPadShortcut",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet38",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet74",
    "cifar_resnet110",
]

STAGE_WIDTHS = (16, 32, 64)
PAPER = "He et al., Deep Residual Learning for Image Recognition (CVPR 2016)"
PAPER_URL = "https://arxiv.org/abs/1512.03385"
DATASETS = ("cifar10", "cifar100")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and append zero channels up to `out_planes`."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option-A shortcut cannot shrink {in_planes} to {out_planes} channels")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's last pair pads dim 1 (channels) here: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, self.out_planes - self.in_planes))

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (post-activation)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "A",
        mid_planes: int | None = None,
    ):
        super().__init__()
        mid_planes = planes if mid_planes is None else mid_planes
        self.conv1 = conv3x3(in_planes, mid_planes, stride)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = conv3x3(mid_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = stride != 1 or in_planes != planes
        self.stride = stride
        if not self.downsample:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch F(x), before it is added to the shortcut."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; any input size works thanks to global pooling."""

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        mid_channels: Sequence[int] | None = None,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        num_blocks = 3 * n
        if mid_channels is None:
            mid_channels = [w for w in STAGE_WIDTHS for _ in range(n)]
        mid_channels = [int(c) for c in mid_channels]
        if len(mid_channels) != num_blocks or min(mid_channels) < 1:
            raise ValueError(
                f"mid_channels must list {num_blocks} positive widths (one per block) "
                f"for depth {depth}, got {mid_channels}"
            )
        self.depth, self.n, self.shortcut_option = depth, n, shortcut
        self.mid_channels = list(mid_channels)
        self.num_classes = num_classes

        self.stem = nn.Sequential(
            conv3x3(in_chans, STAGE_WIDTHS[0]), nn.BatchNorm2d(STAGE_WIDTHS[0]), nn.ReLU(inplace=True)
        )
        stages = []
        in_planes = STAGE_WIDTHS[0]
        for s, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                mid = mid_channels[s * n + b]
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut, mid_planes=mid))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for block in self.blocks:
                nn.init.zeros_(block.bn2.weight)

    @property
    def blocks(self) -> list[BasicBlock]:
        """All residual blocks, stage by stage."""
        return [block for stage in self.stages for block in stage]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_resnet(
    depth: int, shortcut: str, num_classes: int, in_chans: int, **kwargs
) -> CifarResNet:
    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, shortcut=shortcut, **kwargs)


_A = "option-A shortcuts (zero-padded identity)"
_B = "option-B shortcuts (1x1 projection + BN on dimension change)"


@register_model("cifar_resnet20", paper=PAPER, variant=f"ResNet-20, {_A}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(20, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet32", paper=PAPER, variant=f"ResNet-32, {_A}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet32(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(32, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet38", paper=PAPER, variant=f"ResNet-38, {_A} (SkipNet's depth)", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet38(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(38, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet44", paper=PAPER, variant=f"ResNet-44, {_A}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet44(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(44, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet56", paper=PAPER, variant=f"ResNet-56, {_A}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet56(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(56, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet74", paper=PAPER, variant=f"ResNet-74, {_A} (SkipNet's depth)", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet74(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(74, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet110", paper=PAPER, variant=f"ResNet-110, {_A}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet110(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(110, "A", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet20_b", paper=PAPER, variant=f"ResNet-20, {_B}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet20_b(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(20, "B", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet32_b", paper=PAPER, variant=f"ResNet-32, {_B}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet32_b(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(32, "B", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet44_b", paper=PAPER, variant=f"ResNet-44, {_B}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet44_b(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(44, "B", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet56_b", paper=PAPER, variant=f"ResNet-56, {_B}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet56_b(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(56, "B", num_classes, in_chans, **kwargs)


@register_model("cifar_resnet110_b", paper=PAPER, variant=f"ResNet-110, {_B}", paper_url=PAPER_URL, datasets=DATASETS)
def cifar_resnet110_b(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    return _cifar_resnet(110, "B", num_classes, in_chans, **kwargs)
