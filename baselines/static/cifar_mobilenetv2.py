"""MobileNetV2 for 32×32 inputs (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018).

The ImageNet network divides the input by 32; on CIFAR that leaves a 1×1 map after the third
stage. The usual CIFAR adaptation, used here, keeps torchvision's layer layout and changes two
strides from 2 to 1: the 3×3 stem and the first block of the 24-channel stage, so the network
divides its input by 8 (32×32 → 4×4 before the 1×1 conv to 1280 channels). Everything else
is torchvision's `mobilenet_v2`: inverted residual blocks with expansion 6 (1 for the first),
ReLU6, residual connections where stride is 1 and widths match, Dropout(0.2) before the
classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmarks.registry import register_model

__all__ = ["CifarMobileNetV2", "InvertedResidual", "mobilenetv2_cifar"]

# expansion t, output channels c, repeats n, first stride s (torchvision's table, CIFAR strides)
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a width to a multiple of `divisor`, never below 90% of `v` (as torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand - 3×3 depthwise - 1×1 linear projection, with a residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ):
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(in_chans, in_ch, stride=1)]
        for t, c, n, s in CIFAR_SETTING:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(conv_bn_relu6(in_ch, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        self.num_features = self.last_channel

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "mobilenetv2_cifar",
    paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018)",
    variant="CIFAR strides: stride-1 stem and first 24-channel block (output stride 8)",
    paper_url="https://arxiv.org/abs/1801.04381",
    datasets=("cifar10", "cifar100"),
)
def mobilenetv2_cifar(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_chans, **kwargs)
