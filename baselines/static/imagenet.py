"""ImageNet backbones, built by torchvision's own constructors (never with pretrained weights:
the suite trains or loads its own checkpoints and downloads nothing).

MACs at 224×224 (conv + linear, torchvision's "GFLOPS" column, which counts MACs):
ResNet-18 1.814 G, ResNet-34 3.664 G, ResNet-50 4.089 G, ResNet-101 7.801 G,
MobileNetV2 0.301 G. `in_chans` other than 3 replaces the stem conv by one with the same
shape otherwise, so the backbones also run on grayscale data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torchvision.models as tvm

from benchmarks.registry import register_model

__all__ = ["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"]

RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition (CVPR 2016)"
RESNET_URL = "https://arxiv.org/abs/1512.03385"
MOBILENET_PAPER = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018)"
MOBILENET_URL = "https://arxiv.org/abs/1801.04381"
DATASETS = ("imagenet", "ilsvrc10")


def _replace_stem(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _torchvision_resnet(
    builder: Callable[..., tvm.ResNet], num_classes: int, in_chans: int, **kwargs
) -> tvm.ResNet:
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = _replace_stem(model.conv1, in_chans)
    return model


@register_model(
    "resnet18",
    paper=RESNET_PAPER,
    variant="torchvision ResNet-18 (v1.5 strides), random init",
    paper_url=RESNET_URL,
    datasets=DATASETS,
)
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> tvm.ResNet:
    return _torchvision_resnet(tvm.resnet18, num_classes, in_chans, **kwargs)


@register_model(
    "resnet34",
    paper=RESNET_PAPER,
    variant="torchvision ResNet-34, random init",
    paper_url=RESNET_URL,
    datasets=DATASETS,
)
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> tvm.ResNet:
    return _torchvision_resnet(tvm.resnet34, num_classes, in_chans, **kwargs)


@register_model(
    "resnet50",
    paper=RESNET_PAPER,
    variant="torchvision ResNet-50 (v1.5: stride 2 in the 3x3 conv), random init",
    paper_url=RESNET_URL,
    datasets=DATASETS,
)
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> tvm.ResNet:
    return _torchvision_resnet(tvm.resnet50, num_classes, in_chans, **kwargs)


@register_model(
    "resnet101",
    paper=RESNET_PAPER,
    variant="torchvision ResNet-101 (v1.5: stride 2 in the 3x3 conv), random init",
    paper_url=RESNET_URL,
    datasets=DATASETS,
)
def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> tvm.ResNet:
    return _torchvision_resnet(tvm.resnet101, num_classes, in_chans, **kwargs)


@register_model(
    "mobilenet_v2",
    paper=MOBILENET_PAPER,
    variant="torchvision MobileNetV2 1.0, random init",
    paper_url=MOBILENET_URL,
    datasets=DATASETS,
)
def mobilenet_v2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> tvm.MobileNetV2:
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.features[0][0] = _replace_stem(model.features[0][0], in_chans)
    return model
