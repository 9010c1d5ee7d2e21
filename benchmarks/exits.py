"""Confidence thresholds of early-exit networks, calibrated on `val` to a MACs budget.

Shared by every model that stops a sample at the first exit whose confidence reaches its
threshold (the early-exit baselines of `baselines.dynamic.early_exit`, D2NN's confidence
cascade). Given, on the val split, each exit's prediction and confidence per sample, and the
MACs of the path that stops at each exit (counted by the routing trace), every threshold
vector of a grid is scored analytically, and `threshold_for_budget` keeps the vector with the
best val score whose mean val MACs stay within a fraction of the full path's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: candidate thresholds per exit; 2.0 never stops (a confidence never reaches it)
DEFAULT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 2.0)


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: tuple[float, ...]
    score: float  # val F1 or accuracy, in percent
    macs: float  # mean MACs per sample on val


def score(predictions: torch.Tensor, targets: torch.Tensor, metric: str) -> float:
    """Accuracy, or the F-score of class 1 (`metric` "f1"), in percent."""
    if metric == "f1":
        p, t = predictions == 1, targets == 1
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return 100.0 * float((predictions == targets).float().mean())


def evaluate_thresholds(
    thresholds: Sequence[float],
    predictions: torch.Tensor,
    confidences: torch.Tensor,
    targets: torch.Tensor,
    costs: Sequence[float],
    metric: str,
) -> OperatingPoint:
    """Val score and mean MACs of one threshold vector: a sample stops at the first exit j
    (of K − 1 internal ones) whose confidence is at least thresholds[j], else at the last.
    `predictions` and `confidences` are (N, K); `costs[k]` is the MACs of stopping at exit k."""
    n, k = predictions.shape
    exit_at = torch.full((n,), k - 1, dtype=torch.long)
    for j in range(k - 2, -1, -1):
        exit_at = torch.where(confidences[:, j] >= thresholds[j], j, exit_at)
    chosen = predictions.gather(1, exit_at[:, None]).squeeze(1)
    macs = float(torch.tensor(list(costs), dtype=torch.float64)[exit_at].mean())
    return OperatingPoint(tuple(float(t) for t in thresholds), score(chosen, targets, metric), macs)


def threshold_for_budget(
    predictions: torch.Tensor,
    confidences: torch.Tensor,
    targets: torch.Tensor,
    costs: Sequence[float],
    metric: str,
    macs_fraction: float,
    grid: Sequence[float] = DEFAULT_GRID,
    reference: float | None = None,
) -> OperatingPoint:
    """The threshold vector with the best val score whose mean val MACs are at most
    `macs_fraction` of `reference` (default: the full path, `costs[-1]`; ties: the cheaper).
    ValueError when even the cheapest vector costs more."""
    candidates = [
        evaluate_thresholds(t, predictions, confidences, targets, costs, metric)
        for t in itertools.product(grid, repeat=predictions.shape[1] - 1)
    ]
    reference = float(costs[-1] if reference is None else reference)
    within = [p for p in candidates if p.macs <= macs_fraction * reference + 1e-9]
    if not within:
        cheapest = min(p.macs for p in candidates) / reference
        raise ValueError(
            f"no threshold vector keeps val MACs within {macs_fraction:g} of the full path; "
            f"the cheapest costs {cheapest:.3f}"
        )
    return max(within, key=lambda p: (p.score, -p.macs))
