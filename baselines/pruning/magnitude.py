"""Global unstructured magnitude pruning (the classic baseline of Han et al., 2015), with
`torch.nn.utils.prune`.

The weights with the smallest |w| across all conv and linear layers are set to zero. The
network keeps its shape and runs on the same dense kernels, so **there is no speed-up**:
`sparse_cost` reports the dense MACs the hardware executes next to the "nonzero MACs" (the
multiply-accumulates whose weight is nonzero), which is the number sparsity papers quote and
which no dense CPU/GPU kernel realizes. The suite's cost model counts the dense MACs; the
nonzero count is reported for comparison only, always labelled as not a speed-up.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from benchmarks.errors import ConfigError

__all__ = ["SparseCost", "magnitude_prune", "sparse_cost"]

NOT_A_SPEEDUP = (
    "unstructured sparsity: the network runs dense kernels, so macs_dense is what executes; "
    "macs_nonzero is NOT a speed-up"
)


def _prunable(model: nn.Module, layer_types: tuple[type[nn.Module], ...]) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, layer_types)]


def magnitude_prune(
    model: nn.Module,
    amount: float,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
    permanent: bool = True,
) -> nn.Module:
    """A copy of `model` with the fraction `amount` of its conv/linear weights (global ranking
    by |w|) set to zero.

    `permanent=True` folds the masks into plain weights (state dicts stay loadable into the
    unpruned architecture); `permanent=False` keeps torch's `weight_orig`/`weight_mask`
    re-parametrization, which holds pruned weights at zero while fine-tuning.
    """
    if not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ConfigError(f"magnitude pruning: amount must be in [0, 1), got {amount!r}")
    pruned = copy.deepcopy(model)
    targets = _prunable(pruned, layer_types)
    if not targets:
        raise ConfigError(f"magnitude pruning: {type(model).__name__} has no {layer_types} layers")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(amount))
    if permanent:
        for module, name in targets:
            prune.remove(module, name)
    arch = getattr(model, "arch_config", None)
    if arch is not None and permanent:
        pruned.arch_config = copy.deepcopy(arch)
    return pruned


@dataclass(frozen=True)
class SparseCost:
    """Per-sample cost of a (possibly sparse) static network, at batch 1."""

    macs_dense: int  # what executes: every weight, zero or not
    macs_nonzero: int  # multiply-accumulates with a nonzero weight: NOT a speed-up
    params_prunable: int
    params_nonzero: int
    note: str = NOT_A_SPEEDUP

    @property
    def weight_sparsity(self) -> float:
        return 1.0 - self.params_nonzero / max(1, self.params_prunable)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "weight_sparsity": self.weight_sparsity, "speedup": 1.0}


@torch.no_grad()
def sparse_cost(
    model: nn.Module,
    example: torch.Tensor,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> SparseCost:
    """Dense and nonzero MACs of one forward pass on `example` (one sample, batch dim included).

    The dense count is the suite's (`benchmarks.cost.count_macs`). The nonzero count removes,
    for every zero weight, the MACs it takes part in: H_out·W_out per conv weight (padding
    included, the usual convention), one per linear weight.
    """
    from benchmarks.cost import count_macs

    if example.shape[0] != 1:
        raise ConfigError(f"sparse_cost counts one sample: pass a batch of 1, got {example.shape[0]}")
    zero_macs = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal zero_macs
        weight = module.weight
        if isinstance(module, nn.Conv2d):
            positions = output[0, 0].numel()
        else:
            positions = output[0].numel() // module.out_features
        zero_macs += positions * (weight.numel() - int(torch.count_nonzero(weight)))

    handles = [m.register_forward_hook(hook) for m, _ in _prunable(model, layer_types)]
    try:
        dense = count_macs(model, example).macs
    finally:
        for h in handles:
            h.remove()
    weights = [m.weight for m, _ in _prunable(model, layer_types)]
    return SparseCost(
        macs_dense=dense,
        macs_nonzero=dense - zero_macs,
        params_prunable=sum(w.numel() for w in weights),
        params_nonzero=sum(int(torch.count_nonzero(w)) for w in weights),
    )
