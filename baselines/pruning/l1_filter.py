"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

In each pruned layer the filters with the smallest sum of absolute kernel weights are removed,
together with their BatchNorm channel and the matching input channels of the next layer; the
result is a narrower dense network (real MACs and latency savings), fine-tuned afterwards
(40 epochs at lr 0.001 on CIFAR in the paper).

Layer numbers follow the paper: the 3×3 convolutions counted in forward order from the stem
(= 1). In a CIFAR ResNet block k (0-based) conv1 is layer 2k + 2 and conv2 is layer 2k + 3;
option-B shortcut projections are not numbered (the paper's ResNets have option-A shortcuts
and no such convs). Only the first conv of a block can be pruned: the second one's output is
added to the shortcut. In VGG-16, conv i is layer i.

Filter counts: a layer with n filters pruned by a fraction p keeps floor(n (1 - p)) filters
(at least 1). This reading reproduces every Table 1 figure (see `TABLE1` and docs/baselines.md):
our MACs rounded to the printed digits equal the printed "FLOP" value for all five variants
and the three base networks, and so do our parameter counts once BatchNorm parameters are
left out (the paper's column does not count them; with them we are within 0.8% of the print).

`strategy="independent"` (default) ranks each layer's filters on its full kernel;
`"greedy"` ranks them on the kernel restricted to the input channels that survive the
previous layer's pruning (Li et al. §3.3; only differs for consecutive pruned VGG layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from baselines.pruning.surgery import prunable_units, remove_channels, zero_channels
from baselines.static.cifar_resnet import STAGE_WIDTHS, CifarResNet
from baselines.static.cifar_vgg import VGG16_CFG, CifarVGG
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.registry import register_model

__all__ = [
    "TABLE1",
    "L1PruneSpec",
    "L1Variant",
    "as_printed",
    "get_l1_variant",
    "kept_filters",
    "l1_keep",
    "l1_mask",
    "l1_prune",
    "resnet_l1_spec",
]

PAPER = "Li et al., Pruning Filters for Efficient ConvNets (ICLR 2017)"
PAPER_URL = "https://arxiv.org/abs/1608.08710"


@dataclass(frozen=True)
class L1PruneSpec:
    """Which layers lose which fraction of their filters.

    `ratios` maps a layer number (3×3 convs from the stem = 1) to the fraction of its filters
    to prune, in [0, 1).
    """

    ratios: Mapping[int, float]
    strategy: str = "independent"

    def __post_init__(self) -> None:
        if self.strategy not in ("independent", "greedy"):
            raise ConfigError(f"L1 pruning strategy must be 'independent' or 'greedy', got '{self.strategy}'")
        for layer, ratio in self.ratios.items():
            if not isinstance(layer, int) or layer < 1:
                raise ConfigError(f"L1 pruning: layer numbers start at 1 (the stem), got {layer!r}")
            if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
                raise ConfigError(f"L1 pruning: layer {layer} ratio must be in [0, 1), got {ratio!r}")


def kept_filters(num_filters: int, ratio: float) -> int:
    """floor(n (1 - ratio)), at least 1 (the small epsilon guards 0.7 * 10 = 6.9999...)."""
    return max(1, math.floor(num_filters * (1 - ratio) + 1e-6))


def resnet_l1_spec(
    depth: int, stage_ratios: tuple[float, float, float], skip: tuple[int, ...] = ()
) -> L1PruneSpec:
    """Li et al.'s ResNet rule: conv1 of every block of stage s loses `stage_ratios[s]` of its
    filters, except the layers listed in `skip` (the sensitive ones)."""
    n = (depth - 2) // 6
    ratios = {}
    for k in range(3 * n):
        layer = 2 * k + 2
        if layer not in skip and stage_ratios[k // n] > 0:
            ratios[layer] = stage_ratios[k // n]
    return L1PruneSpec(ratios)


# --- which layers exist and what they are called --------------------------------------------


def _layer_of_unit(model: nn.Module) -> list[int]:
    """The paper's layer number of each prunable unit of `model`."""
    if isinstance(model, CifarResNet):
        return [2 * k + 2 for k in range(len(model.blocks))]
    return list(range(1, len(model.convs) + 1))


def _check_layers(model: nn.Module, spec: L1PruneSpec) -> None:
    if isinstance(model, CifarResNet):
        last = 2 * len(model.blocks) + 1
        for layer in spec.ratios:
            if layer > last:
                raise ConfigError(f"L1 pruning: layer {layer} does not exist in ResNet-{model.depth} (layers 1-{last})")
            if layer == 1 or layer % 2 == 1:
                what = "the stem" if layer == 1 else f"the second conv of block {(layer - 3) // 2}"
                raise ConfigError(
                    f"L1 pruning: layer {layer} is {what}, whose output feeds the residual sum; "
                    "only the first conv of a block (even layer numbers) can be pruned"
                )
    else:
        last = len(model.convs)
        for layer in spec.ratios:
            if layer > last:
                raise ConfigError(f"L1 pruning: layer {layer} does not exist (the VGG has {last} convs)")


def _target_widths(base_widths: list[int], layers: list[int], spec: L1PruneSpec) -> list[int]:
    return [
        kept_filters(w, spec.ratios[layer]) if layer in spec.ratios else w
        for w, layer in zip(base_widths, layers, strict=True)
    ]


# --- selection and surgery -------------------------------------------------------------------


@torch.no_grad()
def l1_keep(model: nn.Module, spec: L1PruneSpec) -> list[torch.Tensor | None]:
    """Per prunable unit, the indices of the filters with the largest L1 norms (None: all kept).

    Ties are broken by filter index (lowest first), so the choice is deterministic.
    """
    units = prunable_units(model)
    _check_layers(model, spec)
    keep: list[torch.Tensor | None] = []
    previous: torch.Tensor | None = None  # kept input channels (greedy strategy, VGG)
    for (conv, _), layer in zip(units, _layer_of_unit(model), strict=True):
        weight = conv.weight.detach().float().cpu()
        if spec.strategy == "greedy" and previous is not None and isinstance(model, CifarVGG):
            weight = weight[:, previous]
        if layer not in spec.ratios:
            keep.append(None)
            previous = None
            continue
        norms = weight.abs().sum(dim=(1, 2, 3))
        count = kept_filters(conv.out_channels, spec.ratios[layer])
        order = torch.argsort(-norms, stable=True)
        chosen = order[:count].sort().values
        keep.append(chosen)
        previous = chosen
    return keep


def _as_spec(spec: L1PruneSpec | str) -> L1PruneSpec:
    return get_l1_variant(spec).spec if isinstance(spec, str) else spec


def l1_prune(model: nn.Module, spec: L1PruneSpec | str) -> nn.Module:
    """Prune a (trained) CIFAR ResNet or VGG by filter L1 norm; returns a new, narrower network.

    `spec` is an `L1PruneSpec` or the id of a Table 1 variant (e.g. "cifar_resnet56_l1_a").
    A spec with no ratios returns a network with identical weights and predictions.
    The result's `arch_config` names the Table 1 id when `model` was built as that variant's
    base, else the base id with explicit widths; either rebuilds it with `create_model`.
    """
    variant = get_l1_variant(spec) if isinstance(spec, str) else None
    spec = _as_spec(spec)
    pruned = remove_channels(model, l1_keep(model, spec))
    arch = getattr(model, "arch_config", None)
    if variant is None:
        variant = next(
            (v for v in TABLE1.values() if v.spec == spec and arch and arch["name"] == v.base), None
        )
    if variant is not None and arch is not None and arch["name"] == variant.base:
        kwargs = {k: v for k, v in arch.get("kwargs", {}).items() if k in ("num_classes", "in_chans")}
        pruned.arch_config = {"name": variant.model_id, "kwargs": kwargs}
    return pruned


def l1_mask(model: nn.Module, spec: L1PruneSpec | str) -> nn.Module:
    """The original network with the filters `l1_prune` removes zeroed (same function)."""
    spec = _as_spec(spec)
    return zero_channels(model, l1_keep(model, spec))


# --- the Table 1 variants ---------------------------------------------------------------------


@dataclass(frozen=True)
class L1Variant:
    """One pruned network of Li et al. Table 1, with the figures the paper prints."""

    model_id: str
    base: str
    depth: int  # 16 for the VGG
    spec: L1PruneSpec
    description: str
    # Table 1 exactly as printed: the "FLOP" column counts multiply-accumulates; the
    # "Parameters" column counts conv and linear weights and biases, not BatchNorm.
    table_macs: str
    table_params: str
    table_base_macs: str
    table_base_params: str

    def widths(self) -> list[int]:
        """Widths of the prunable units after pruning (block conv1s, or the VGG's convs)."""
        if self.base.startswith("cifar_vgg"):
            base = [v for v in VGG16_CFG if v != "M"]
            return _target_widths(base, list(range(1, len(base) + 1)), self.spec)
        n = (self.depth - 2) // 6
        base = [w for w in STAGE_WIDTHS for _ in range(n)]
        return _target_widths(base, [2 * k + 2 for k in range(3 * n)], self.spec)

    def build(self, num_classes: int = 10, in_chans: int = 3) -> CifarResNet | CifarVGG:
        if self.base.startswith("cifar_vgg"):
            widths = iter(self.widths())
            cfg = [v if v == "M" else next(widths) for v in VGG16_CFG]
            return CifarVGG(cfg, num_classes, in_chans, classifier="li")
        return CifarResNet(self.depth, num_classes, in_chans, shortcut="A", mid_channels=self.widths())


_VGG_A = L1PruneSpec({layer: 0.5 for layer in (1, 8, 9, 10, 11, 12, 13)})

TABLE1: dict[str, L1Variant] = {
    v.model_id: v
    for v in (
        L1Variant(
            "cifar_resnet56_l1_a", "cifar_resnet56", 56,
            resnet_l1_spec(56, (0.1, 0.1, 0.1), skip=(16, 20, 38, 54)),
            "ResNet-56-pruned-A: 10% of the filters of every block's first conv, layers 16, 20, 38, 54 skipped",
            "1.12E8", "7.7E5", "1.25E8", "8.5E5",
        ),
        L1Variant(
            "cifar_resnet56_l1_b", "cifar_resnet56", 56,
            resnet_l1_spec(56, (0.6, 0.3, 0.1), skip=(16, 18, 20, 34, 38, 54)),
            "ResNet-56-pruned-B: 60%/30%/10% in stages 1/2/3, layers 16, 18, 20, 34, 38, 54 skipped",
            "9.09E7", "7.3E5", "1.25E8", "8.5E5",
        ),
        L1Variant(
            "cifar_resnet110_l1_a", "cifar_resnet110", 110,
            resnet_l1_spec(110, (0.5, 0.0, 0.0), skip=(36,)),
            "ResNet-110-pruned-A: 50% in stage 1 only, layer 36 skipped",
            "2.13E8", "1.68E6", "2.53E8", "1.72E6",
        ),
        L1Variant(
            "cifar_resnet110_l1_b", "cifar_resnet110", 110,
            resnet_l1_spec(110, (0.5, 0.4, 0.3), skip=(36, 38, 74)),
            "ResNet-110-pruned-B: 50%/40%/30% in stages 1/2/3, layers 36, 38, 74 skipped",
            "1.55E8", "1.16E6", "2.53E8", "1.72E6",
        ),
        L1Variant(
            "cifar_vgg16_l1_a", "cifar_vgg16", 16, _VGG_A,
            "VGG-16-pruned-A: 50% of the filters of conv 1 and convs 8-13",
            "2.06E8", "5.4E6", "3.13E8", "1.5E7",
        ),
    )
}


def as_printed(value: float, printed: str) -> str:
    """`value` rounded to the significant digits of `printed` ("1.12E8": 3), formatted alike."""
    mantissa = printed.upper().split("E")[0]
    digits = sum(c.isdigit() for c in mantissa)
    return f"{value:.{digits - 1}E}".replace("E+0", "E").replace("E+", "E")


def get_l1_variant(name: str) -> L1Variant:
    try:
        return TABLE1[name]
    except KeyError:
        raise UnknownNameError("L1 pruning variant", name, TABLE1) from None


def _spec_kwargs(model_id: str) -> dict[str, Any]:
    variant = TABLE1[model_id]
    return {
        "paper": PAPER,
        "variant": variant.description,
        "kind": "pruned",
        "paper_url": PAPER_URL,
        "datasets": ("cifar10",),
        "tags": (f"base:{variant.base}",),
    }


# Architectures only: build one, then load the pruned checkpoint into it.


@register_model("cifar_resnet56_l1_a", **_spec_kwargs("cifar_resnet56_l1_a"))
def cifar_resnet56_l1_a(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    return TABLE1["cifar_resnet56_l1_a"].build(num_classes, in_chans)


@register_model("cifar_resnet56_l1_b", **_spec_kwargs("cifar_resnet56_l1_b"))
def cifar_resnet56_l1_b(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    return TABLE1["cifar_resnet56_l1_b"].build(num_classes, in_chans)


@register_model("cifar_resnet110_l1_a", **_spec_kwargs("cifar_resnet110_l1_a"))
def cifar_resnet110_l1_a(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    return TABLE1["cifar_resnet110_l1_a"].build(num_classes, in_chans)


@register_model("cifar_resnet110_l1_b", **_spec_kwargs("cifar_resnet110_l1_b"))
def cifar_resnet110_l1_b(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    return TABLE1["cifar_resnet110_l1_b"].build(num_classes, in_chans)


@register_model("cifar_vgg16_l1_a", **_spec_kwargs("cifar_vgg16_l1_a"))
def cifar_vgg16_l1_a(num_classes: int = 10, in_chans: int = 3) -> CifarVGG:
    return TABLE1["cifar_vgg16_l1_a"].build(num_classes, in_chans)
