"""D2NN's learning rules: ε-greedy schedule, mini-bag rewards, Q-learning targets and loss.

Everything here is a pure function of tensors, so each rule can be checked by hand:

* `epsilon_at` — linear decay 1.0 → 0.05 over the first 60% of joint steps, then constant.
* `bag_rewards` — r = λ·A + (1 − λ)·E per mini-bag of m samples: A is the bag's F-score (binary
  tasks) or accuracy, E = −(mean executed MACs of the bag / MACs of the reference path). Every
  member of a bag receives its bag's reward.
* `q_targets` — for each (sample, control node visited): the max Q-value of the next control
  node the sample visits (γ = 1), or the final reward for its last decision.
* `bag_q_loss` — squared error between a bag's Q-value (the mean of its members' Q-values of
  the actions taken) and the mean of their targets, per control node; summed over control
  nodes, averaged over bags. With m = 1 this is plain per-sample Q-learning.
"""

from __future__ import annotations

import torch

__all__ = [
    "bag_ids",
    "bag_q_loss",
    "bag_rewards",
    "epsilon_at",
    "f1_score",
    "q_targets",
]


def epsilon_at(
    progress: float, start: float = 1.0, end: float = 0.05, decay_fraction: float = 0.6
) -> float:
    """ε after `progress` (fraction of the joint stage done, in [0, 1]): linear from `start`
    to `end` over the first `decay_fraction` of the stage, then `end`."""
    if decay_fraction <= 0:
        return end
    t = min(max(progress, 0.0) / decay_fraction, 1.0)
    return start + (end - start) * t


def bag_ids(n: int, bag_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bag index of each of `n` consecutive samples (bags of `bag_size`; the last may be
    smaller)."""
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1, got {bag_size}")
    return torch.arange(n, device=device) // bag_size


def f1_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """F1 of the positive class, 2·tp / (2·tp + fp + fn); 1 where there is nothing to find and
    nothing was found (tp = fp = fn = 0)."""
    tp, fp, fn = (t.to(torch.float64) for t in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.ones_like(tp))


def bag_rewards(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    cost: torch.Tensor,
    lam: float,
    bags: torch.Tensor,
    metric: str = "accuracy",
) -> torch.Tensor:
    """The reward of each sample's bag: λ·A + (1 − λ)·E.

    `predictions`, `targets`: class indices; `cost`: normalized executed MACs per sample
    (1 = the reference path); `bags`: bag index per sample (`bag_ids`); `metric`: "f1" (A is
    the bag's F-score on class 1) or "accuracy" (A is the fraction correct). Returns one
    reward per sample (float64), equal within a bag.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    count = int(bags.max()) + 1 if bags.numel() else 0

    def per_bag(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(count, dtype=torch.float64, device=values.device)
        return out.index_add_(0, bags, values.to(torch.float64))

    size = per_bag(torch.ones_like(cost))
    if metric == "f1":
        pred_pos, true_pos = predictions == 1, targets == 1
        accuracy = f1_score(
            per_bag(pred_pos & true_pos), per_bag(pred_pos & ~true_pos), per_bag(~pred_pos & true_pos)
        )
    elif metric == "accuracy":
        accuracy = per_bag(predictions == targets) / size
    else:
        raise ValueError(f"metric must be 'f1' or 'accuracy', got {metric!r}")
    efficiency = -per_bag(cost) / size
    reward = lam * accuracy + (1.0 - lam) * efficiency
    return reward[bags]


def q_targets(
    visited: torch.Tensor, next_values: torch.Tensor, rewards: torch.Tensor
) -> torch.Tensor:
    """Q-learning regression targets, (N, C).

    `visited` (N, C) bool: which control nodes (columns, in the graph's topological order) each
    sample visited; `next_values` (N, C): max over actions of each control node's Q-values
    (detached); `rewards` (N,): the final reward. The target of a visited (sample, control) is
    the `next_values` of the next control that sample visits (γ = 1), or its reward if there is
    none. Unvisited entries are 0.
    """
    n, c = visited.shape
    targets = torch.zeros(n, c, dtype=torch.float64, device=visited.device)
    following = rewards.to(torch.float64)
    for j in range(c - 1, -1, -1):
        targets[:, j] = torch.where(visited[:, j], following, 0.0)
        following = torch.where(visited[:, j], next_values[:, j].to(torch.float64), following)
    return targets


def bag_q_loss(
    taken: torch.Tensor, targets: torch.Tensor, visited: torch.Tensor, bags: torch.Tensor
) -> torch.Tensor:
    """Σ over control nodes of (bag Q − bag target)², averaged over bags.

    `taken` (N, C): Q-values of the actions taken (with gradient); `targets` (N, C) from
    `q_targets`; `visited` (N, C) bool; `bags` (N,) bag index. A bag's Q-value at a control
    node is the mean over the members that visited it; so is its target. Controls no member
    of a bag visited do not contribute.
    """
    if taken.numel() == 0:
        return taken.sum()
    count = int(bags.max()) + 1
    weight = visited.to(taken.dtype)
    shape = (count, taken.shape[1])
    members = torch.zeros(shape, dtype=taken.dtype, device=taken.device).index_add(0, bags, weight)
    q_sum = torch.zeros(shape, dtype=taken.dtype, device=taken.device).index_add(0, bags, taken * weight)
    t_sum = torch.zeros(shape, dtype=taken.dtype, device=taken.device).index_add(
        0, bags, targets.to(taken.dtype) * weight
    )
    present = members > 0
    error = (q_sum[present] - t_sum[present]) / members[present]
    return (error**2).sum() / count
