"""Small CNNs sized for the embedded `digits` data (8×8) and Fashion-MNIST (28×28).

They are the static reference points of the CPU-sized experiments and the quick suite: conv
stages of conv-BN-ReLU with a stride-2 downsampling conv between stages, global average
pooling and a linear classifier, so they run on any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from benchmarks.registry import register_model


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """`len(widths)` stages of `depth` conv-BN-ReLU layers; stages after the first start with stride 2."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32),
        depth: int = 2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            for i in range(depth):
                layers.append(conv_bn_relu(channels, width, stride=2 if stage and i == 0 else 1))
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model(
    "digits_cnn",
    paper="dynbench (CPU-sized static reference)",
    variant="2 stages 16/32, 2 convs each",
    datasets=("digits",),
)
def digits_cnn(
    num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32), depth: int = 2
) -> SmallCNN:
    return SmallCNN(num_classes, in_chans, widths=widths, depth=depth)


@register_model(
    "fmnist_cnn",
    paper="dynbench (CPU-sized static reference)",
    variant="3 stages 32/64/128, 2 convs each",
    datasets=("fashion-mnist",),
)
def fmnist_cnn(
    num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128), depth: int = 2
) -> SmallCNN:
    return SmallCNN(num_classes, in_chans, widths=widths, depth=depth)
