"""Thresholds of the confidence-threshold cascade, tuned on `val` only.

The baseline stops after stage k where the top class probability of head k reaches the
threshold t_k (`d2nn_cascade_confidence`). `threshold_for_budget` runs the trained cascade
once on the val split with every stage enabled, then scores every threshold vector of a grid
analytically (exit of each sample, its prediction, the exact MACs of its path as the routing
trace counts them) and keeps the vector with the best val score whose val MACs stay within
the budget (`benchmarks.exits`, shared with the early-exit baselines). The `d2nn_confidence` method (reference_impls.d2nn.method) calls it; a sweep over
the budget traces the curve, one final model per budget, each evaluated once on test by the
harness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from benchmarks import exits
from benchmarks.exits import DEFAULT_GRID, OperatingPoint
from reference_impls.d2nn.graph import D2NN

__all__ = ["DEFAULT_GRID", "OperatingPoint", "exit_macs", "exit_outputs", "threshold_for_budget"]


@torch.no_grad()
def exit_outputs(
    model: D2NN, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions (N, K), confidences (N, K), targets (N,), first image (1, C, H, W)) of
    every head, with every stage run."""
    model.eval()
    preds, confs, targets = [], [], []
    first = None
    for images, y in batches:
        if first is None:
            first = images[:1]
        run = model(images, policy="all", return_run=True)
        probs = torch.stack([run.outputs[name].softmax(1) for name in model.exits], 1)
        confidence, prediction = probs.max(2)
        preds.append(prediction)
        confs.append(confidence)
        targets.append(y)
    if first is None:
        raise ValueError("cannot tune thresholds on an empty split")
    return torch.cat(preds), torch.cat(confs), torch.cat(targets), first


def exit_macs(model: D2NN, sample: torch.Tensor) -> list[int]:
    """MACs of the path that stops after stage k (k = 1..K), counted by the routing trace on a
    real sample."""
    controls = model.controls
    costs = []
    for k in range(len(controls) + 1):
        policy = {c: 1 for c in controls[:k]}
        if k < len(controls):
            policy[controls[k]] = 0
        costs.append(int(model.path_macs(sample[:1], policy)[0]))
    return costs


def threshold_for_budget(
    model: D2NN,
    val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    metric: str,
    macs_fraction: float,
    grid: Sequence[float] = DEFAULT_GRID,
) -> OperatingPoint:
    """The threshold vector with the best val score whose mean val MACs are at most
    `macs_fraction` of the cascade's reference path (`benchmarks.exits.threshold_for_budget`
    on this cascade's exits). ValueError when even the cheapest vector costs more."""
    predictions, confidences, targets, sample = exit_outputs(model, val_batches)
    costs = exit_macs(model, sample)
    return exits.threshold_for_budget(
        predictions, confidences, targets, costs, metric, macs_fraction, grid, reference=model.reference_macs(sample)
    )
