"""Oracles: a dynamic model's own decisions made beforehand, the skipped parts removed, written
as plain PyTorch (DESIGN §4, docs/latency.md). The latency harness times a model's
`oracle(x)` beside the model; the gap between the two realization ratios is the
implementation's.

The pieces shared by the ResNet families whose basic blocks gate the first convolution's
output channels per sample (LC-Net's C-Net, FBS): a *plan* per block says which rows run it,
which channels each group of rows keeps and by how much each kept channel is scaled, in index
tensors only, so that running a plan reads nothing back from the device (a fixed plan can be
captured in a CUDA graph). Batch 1 decides in Python when the plan is made.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SKIP", "BlockPlan", "basic_block_plan", "channel_groups", "run_basic_block"]

#: (rows that share a pattern: indices among the block's rows or None for all, kept channels,
#: their scales (rows, kept, 1, 1))
ChannelGroup = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]
#: {"skip": bool, "rows": indices of the rows that run the block or None for all, "groups":
#: channel groups or None (every channel, unscaled), "scale_s": a per-row scale or None}
BlockPlan = dict[str, Any]
SKIP: BlockPlan = {"skip": True}


def channel_groups(keep: torch.Tensor, scale: torch.Tensor) -> list[ChannelGroup]:
    """The rows of a (N, C) boolean channel choice grouped by pattern: each group's members,
    its kept channels and their scales (read from the (N, C) `scale`)."""
    if keep.shape[0] == 1:
        kept = keep[0].nonzero().squeeze(1)
        return [(None, kept, scale[:, kept][:, :, None, None])]
    patterns, inverse = torch.unique(keep, dim=0, return_inverse=True)
    groups = []
    for g, pattern in enumerate(patterns):
        members = None if len(patterns) == 1 else (inverse == g).nonzero().squeeze(1)
        kept = pattern.nonzero().squeeze(1)
        picked = scale if members is None else scale[members]
        groups.append((members, kept, picked[:, kept][:, :, None, None]))
    return groups


def basic_block_plan(
    rows: torch.Tensor | None, groups: list[ChannelGroup] | None, scale_s: torch.Tensor | None = None
) -> BlockPlan:
    return {"skip": False, "rows": rows, "groups": groups, "scale_s": scale_s}


def _bn(y: torch.Tensor, norm: nn.BatchNorm2d, idx: torch.Tensor | None = None) -> torch.Tensor:
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if idx is None else t[idx]

    return F.batch_norm(y, pick(norm.running_mean), pick(norm.running_var), pick(norm.weight), pick(norm.bias),
                        False, 0.0, norm.eps)  # fmt: skip


def residual(block: nn.Module, x: torch.Tensor, kept: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    """bn2(conv2(relu(bn1(conv1(x))) · scale)) of a basic block whose `conv1` and `conv2` are
    `GatedConv2d`s, on the kept inner channels `kept` (indices; None: all) of every row."""
    c1, c2 = block.conv1.conv, block.conv2.conv
    if kept is None:
        h = F.relu(_bn(F.conv2d(x, c1.weight, None, c1.stride, c1.padding), block.conv1.norm))
        return _bn(F.conv2d(h, c2.weight, None, c2.stride, c2.padding), block.conv2.norm)
    h = F.relu(_bn(F.conv2d(x, c1.weight[kept], None, c1.stride, c1.padding), block.conv1.norm, kept))
    return _bn(F.conv2d(h * scale, c2.weight[:, kept], None, c2.stride, c2.padding), block.conv2.norm)


def run_basic_block(block: nn.Module, x: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """relu(residual · scale_s + shortcut) of one basic block (`conv1`, `conv2`, `shortcut`) on
    a batch by its plan; rows that do not run it keep their input (the identity)."""
    if plan["skip"]:
        return x
    idx, groups = plan["rows"], plan["groups"]
    xs = x if idx is None else x.index_select(0, idx)
    if groups is None:
        r = residual(block, xs, None, None)
    elif groups[0][0] is None:  # one pattern for every row
        r = residual(block, xs, groups[0][1], groups[0][2])
    else:
        r = None
        for members, kept, scale in groups:
            part = residual(block, xs.index_select(0, members), kept, scale)
            if r is None:
                r = part.new_empty((xs.shape[0], *part.shape[1:]))
            r[members] = part
    if plan["scale_s"] is not None:
        r = r * plan["scale_s"]
    out = F.relu(r + block.shortcut(xs))
    return out if idx is None else x.index_copy(0, idx, out)
