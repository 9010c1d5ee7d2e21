"""Thresholds of the confidence-threshold cascade, tuned on `val` only.

The baseline stops after stage k where the top class probability of head k reaches the
threshold t_k (`d2nn_cascade_confidence`). `threshold_for_budget` runs the trained cascade
once on the val split with every stage enabled, then scores every threshold vector of a grid
analytically (exit of each sample, its prediction, the exact MACs of its path as the routing
trace counts them) and keeps the vector with the best val score whose val MACs stay within
the budget. The `d2nn_confidence` method (reference_impls.d2nn.method) calls it; a sweep over
the budget traces the curve, one final model per budget, each evaluated once on test by the
harness.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from reference_impls.d2nn.graph import D2NN
from reference_impls.d2nn.learning import f1_score

#: candidate thresholds per control node; 2.0 never stops (a probability never reaches it)
DEFAULT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 2.0)


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: tuple[float, ...]
    score: float  # val F1 or accuracy, in percent
    macs: float  # mean MACs per sample on val


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


def score(predictions: torch.Tensor, targets: torch.Tensor, metric: str) -> float:
    if metric == "f1":
        p, t = predictions == 1, targets == 1
        return 100.0 * float(f1_score((p & t).sum(), (p & ~t).sum(), (~p & t).sum()))
    return 100.0 * float((predictions == targets).float().mean())


def evaluate_thresholds(
    thresholds: Sequence[float],
    predictions: torch.Tensor,
    confidences: torch.Tensor,
    targets: torch.Tensor,
    costs: Sequence[int],
    metric: str,
) -> OperatingPoint:
    """Val score and mean MACs of one threshold vector (stop where confidence >= threshold,
    as `ConfidenceQ`'s argmax does)."""
    n, k = predictions.shape
    exit_at = torch.full((n,), k - 1, dtype=torch.long)
    for j in range(k - 2, -1, -1):
        exit_at = torch.where(confidences[:, j] >= thresholds[j], j, exit_at)
    chosen = predictions.gather(1, exit_at[:, None]).squeeze(1)
    macs = float(torch.tensor(costs, dtype=torch.float64)[exit_at].mean())
    return OperatingPoint(tuple(float(t) for t in thresholds), score(chosen, targets, metric), macs)


def candidate_points(
    model: D2NN,
    val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    metric: str,
    grid: Sequence[float] = DEFAULT_GRID,
) -> tuple[list[OperatingPoint], int]:
    """Every threshold vector of `grid` scored on val, and the MACs of the reference path."""
    predictions, confidences, targets, sample = exit_outputs(model, val_batches)
    costs = exit_macs(model, sample)
    candidates = [
        evaluate_thresholds(t, predictions, confidences, targets, costs, metric)
        for t in itertools.product(grid, repeat=predictions.shape[1] - 1)
    ]
    return candidates, model.reference_macs(sample)


def threshold_for_budget(
    model: D2NN,
    val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    metric: str,
    macs_fraction: float,
    grid: Sequence[float] = DEFAULT_GRID,
) -> OperatingPoint:
    """The threshold vector with the best val score whose mean val MACs are at most
    `macs_fraction` of the reference path's (ties: the cheaper). ValueError when even the
    cheapest vector costs more."""
    candidates, reference = candidate_points(model, val_batches, metric, grid)
    budget = macs_fraction * reference
    within = [p for p in candidates if p.macs <= budget + 1e-9]
    if not within:
        cheapest = min(p.macs for p in candidates) / reference
        raise ValueError(
            f"no threshold vector keeps val MACs within {macs_fraction:g} of the reference path; "
            f"the cheapest costs {cheapest:.3f}"
        )
    return max(within, key=lambda p: (p.score, -p.macs))
