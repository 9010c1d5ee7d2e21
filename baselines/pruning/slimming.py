"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017).

1. Train with an L1 penalty on the BatchNorm scale factors γ: loss + λ Σ|γ| (the paper uses
   λ = 1e-4 for VGG, 1e-5 for ResNets). `bn_l1_penalty(model)` is that sum, to be added to a
   method's loss; its gradient λ·sign(γ) is the paper's sub-gradient step.
2. Pick one global threshold so that a target fraction of all prunable channels falls below
   it (`slimming_keep`), and physically remove those channels (`slim_prune`): their conv
   filters, BN entries and the next layer's matching input channels.
3. Fine-tune the narrower network.

Prunable channels: every conv channel of the CIFAR VGGs, and the block-internal channels
(conv1 / bn1) of the CIFAR ResNets; the ResNets' block outputs are tied together by the
residual sums and stay whole. Each layer keeps at least one channel. Removing a channel also
drops its BN shift β, which the paper accepts (γ ≈ 0 after sparsity training); on a network
trained without the penalty, pruning changes the function and needs the fine-tune.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from baselines.pruning.surgery import prunable_units, remove_channels, zero_channels
from benchmarks.errors import ConfigError

__all__ = [
    "bn_l1_penalty",
    "slim_mask",
    "slim_prune",
    "slimming_bns",
    "slimming_keep",
    "slimming_threshold",
]


def slimming_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm layers whose channels slimming may remove, in forward order."""
    return [bn for _, bn in prunable_units(model)]


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """Σ |γ| over the prunable BN layers (multiply by λ and add to the task loss)."""
    return torch.stack([bn.weight.abs().sum() for bn in slimming_bns(model)]).sum()


def _check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"network slimming: prune ratio must be in [0, 1), got {ratio!r}")


@torch.no_grad()
def slimming_keep(model: nn.Module, ratio: float) -> tuple[list[torch.Tensor], float | None]:
    """Channels kept by a global |γ| threshold removing floor(ratio × total) channels.

    Returns per-layer kept indices and the threshold (the largest removed |γ|; None when
    nothing is removed). Ties at the threshold are broken by position, so exactly
    floor(ratio × total) channels go, except that a layer about to lose every channel keeps
    its largest one.
    """
    _check_ratio(ratio)
    scales = [bn.weight.detach().abs().float().cpu() for bn in slimming_bns(model)]
    flat = torch.cat(scales)
    num_remove = int(ratio * flat.numel())
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    threshold = None
    if num_remove:
        order = torch.argsort(flat, stable=True)
        removed[order[:num_remove]] = True
        threshold = float(flat[order[num_remove - 1]])
    keep, start = [], 0
    for s in scales:
        gone = removed[start : start + s.numel()]
        kept = (~gone).nonzero().flatten()
        if kept.numel() == 0:
            kept = s.argmax().reshape(1)
        keep.append(kept)
        start += s.numel()
    return keep, threshold


def slimming_threshold(model: nn.Module, ratio: float) -> float | None:
    return slimming_keep(model, ratio)[1]


def slim_prune(model: nn.Module, ratio: float) -> nn.Module:
    """Remove the `ratio` fraction of prunable channels with the smallest |γ| (new network)."""
    keep, _ = slimming_keep(model, ratio)
    return remove_channels(model, keep)


def slim_mask(model: nn.Module, ratio: float) -> nn.Module:
    """The original network with the channels `slim_prune` removes zeroed (same function as
    the pruned one)."""
    keep, _ = slimming_keep(model, ratio)
    return zero_channels(model, keep)
