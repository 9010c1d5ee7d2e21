"""CIFAR VGG networks with BatchNorm, in the two layouts the pruning literature uses.

* `cifar_vgg16`: the VGG-16 of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017),
  itself Zagoruyko's CIFAR VGG with BN after every conv and after the first linear layer, no
  Dropout. 13 conv3x3-BN-ReLU layers (64, 64, M, 128, 128, M, 256×3, M, 512×3, M, 512×3), a
  final 2×2 max pool to 1×1, then Linear(512, 512)-BN-ReLU-Linear(512, classes). At 32×32:
  313,196,544 conv MACs + 267,264 linear MACs = 313,463,808 MACs (Li et al. Table 1: 3.13E8)
  and 15.0 M parameters (Table 1: 1.5E7).
* `cifar_vgg19`: the VGG-19 of Liu et al., "Learning Efficient Convolutional Networks through
  Network Slimming" (ICCV 2017): 16 conv3x3-BN-ReLU layers, global average pooling of the last
  2×2 map, one Linear(512, classes). 398 M MACs and 20.0 M parameters at 32×32 (their Table 1
  prints 7.97E8 FLOPs = 2 × MACs, 20.04 M parameters).

`cfg` (numbers = conv widths, "M" = 2×2 max pool) describes pruned variants: L1-filter pruning
and network slimming rebuild these classes with narrower layers. Pools use `ceil_mode=True`,
which changes nothing on the even map sizes of 32×32 inputs but lets 8×8 and 28×28 inputs
through all five stages; the final pool is global so the classifier always sees `cfg[-1]`
features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from benchmarks.registry import register_model

__all__ = ["CifarVGG", "VGG16_CFG", "VGG19_CFG", "cifar_vgg16", "cifar_vgg19"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)


class CifarVGG(nn.Module):
    """conv3x3-BN-ReLU feature stack described by `cfg`, global pooling, then the classifier.

    `classifier="li"`: Linear(c, hidden)-BN1d-ReLU-Linear(hidden, classes), global max pool
    (Li et al.); `classifier="slimming"`: one Linear(c, classes), global average pool
    (Liu et al.). `model.convs` and `model.bns` list the conv layers and their BNs in order.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        num_classes: int = 10,
        in_chans: int = 3,
        classifier: str = "li",
        hidden: int = 512,
    ):
        super().__init__()
        if classifier not in ("li", "slimming"):
            raise ValueError(f"classifier must be 'li' or 'slimming', got {classifier!r}")
        cfg = [v if v == "M" else int(v) for v in cfg]
        if not any(v != "M" for v in cfg) or any(v != "M" and v < 1 for v in cfg):
            raise ValueError(f"cfg needs positive conv widths and 'M' pools, got {cfg}")
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(channels, v, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier_kind = classifier
        if classifier == "li":
            self.pool: nn.Module = nn.AdaptiveMaxPool2d(1)
            self.classifier = nn.Sequential(
                nn.Linear(channels, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(channels, num_classes))
        self.num_features = channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    @property
    def bns(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.features if isinstance(m, nn.BatchNorm2d)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "cifar_vgg16",
    paper="Li et al., Pruning Filters for Efficient ConvNets (ICLR 2017)",
    variant="VGG-16 with BN, Linear 512-BN-ReLU-Linear classifier, no Dropout",
    paper_url="https://arxiv.org/abs/1608.08710",
    datasets=("cifar10", "cifar100"),
)
def cifar_vgg16(
    num_classes: int = 10, in_chans: int = 3, cfg: Sequence[int | str] | None = None
) -> CifarVGG:
    return CifarVGG(cfg or VGG16_CFG, num_classes, in_chans, classifier="li")


@register_model(
    "cifar_vgg19",
    paper="Liu et al., Learning Efficient Convolutional Networks through Network Slimming (ICCV 2017)",
    variant="VGG-19 with BN, global average pool, one linear classifier",
    paper_url="https://arxiv.org/abs/1708.06519",
    datasets=("cifar10", "cifar100"),
)
def cifar_vgg19(
    num_classes: int = 10, in_chans: int = 3, cfg: Sequence[int | str] | None = None
) -> CifarVGG:
    return CifarVGG(cfg or VGG19_CFG, num_classes, in_chans, classifier="slimming")
