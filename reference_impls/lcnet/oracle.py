"""LC-Net written out by hand, for the speed comparisons (DESIGN §4): plain PyTorch executing
exactly the decisions an `LCNet` makes, with its own gate heads and weights, and none of the
routing contract (no trace, no engines, no generic gather/scatter).

* `forward_with_decisions(model, x)`: the gate heads decide, as in the model (the "ideal":
  what a person would write for these decisions; the project's gap to it is implementation).
* `forward_with_decisions(model, x, decisions)` with `record_decisions(model, x)`: the
  decisions made beforehand, no gate heads (the "oracle": the network with the skipped parts
  removed, the practical limit). `LCNet.oracle(x)` hands it to the latency harness.

Batch 1 branches in Python; a larger batch gathers the rows that keep a block, and groups the
rows that share a channel pattern. A recorded plan holds index tensors only, so the oracle
reads nothing back from the device: on a GPU it can be captured in a CUDA graph. Basic blocks (conv1, conv2) only: a model with bottleneck
blocks has no oracle (`supports_oracle`).
"""

from __future__ import annotations

import torch

from benchmarks.oracle import SKIP, BlockPlan, basic_block_plan, channel_groups, run_basic_block
from reference_impls.lcnet.model import LCNet, LCNetBlock


def _plan(block: LCNetBlock, n: int, s: torch.Tensor | None, c: torch.Tensor | None) -> BlockPlan:
    """What one block runs on a batch of `n`, from its gate values: the rows whose L-Net keeps
    it (and their L-Net scale), and per group of those rows sharing a C-Net channel pattern,
    the kept channels and their C-Net scales (`benchmarks.oracle`). Batch 1 decides in Python."""
    idx = None
    if s is not None:
        rows = s >= block.tau_l
        if n == 1:
            if not bool(rows[0]):
                return SKIP  # the identity (LC-Net never skips downsampling blocks)
        else:
            idx = rows.nonzero().squeeze(1)
            if idx.numel() == 0:
                return SKIP
            if idx.numel() == n:
                idx = None
    scale_s = None if s is None else block.lnet.scale(s if idx is None else s[idx])[:, None, None, None]
    groups = None
    if c is not None:
        # `c` holds every row's gate values, or (from the sparse engine) only the routed rows'
        cs = c if idx is None or c.shape[0] != n else c[idx]
        groups = channel_groups(cs >= block.tau_c, block.cnet.scale(cs))
    return basic_block_plan(idx, groups, scale_s)


def _gate_values(block: LCNetBlock, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not block.gating:
        return None, None
    pooled = x.mean((2, 3))
    s = block.lnet(pooled).squeeze(1) if block.lnet is not None else None
    c = block.cnet(pooled) if block.cnet is not None else None
    return s, c


def supports_oracle(model: LCNet) -> bool:
    """True when every block is a basic block (the hand-written forward covers conv1, conv2)."""
    return all(block.conv3 is None for block in model.blocks)


@torch.no_grad()
def forward_with_decisions(model: LCNet, x: torch.Tensor, decisions: list[dict] | None = None) -> torch.Tensor:
    """The LC-Net's logits, hand-written: the gate heads decide block by block (the ideal), or
    with `decisions` (from `record_decisions`) every block runs its recorded plan (the oracle)."""
    h = model.stem(x)
    for i, block in enumerate(model.blocks):
        plan = _plan(block, h.shape[0], *_gate_values(block, h)) if decisions is None else decisions[i]
        h = run_basic_block(block, h, plan)
    return model.fc(torch.flatten(model.pool(h), 1))


@torch.no_grad()
def record_decisions(model: LCNet, x: torch.Tensor) -> list[dict]:
    """Every block's plan for `x`: which rows run it, with which channels and scales (what the
    oracle is handed instead of the gate heads)."""
    plans, h = [], model.stem(x)
    for block in model.blocks:
        plan = _plan(block, h.shape[0], *_gate_values(block, h))
        plans.append(plan)
        h = run_basic_block(block, h, plan)
    return plans


@torch.no_grad()
def model_decisions(model: LCNet, x: torch.Tensor) -> list[dict]:
    """Every block's plan from the gate values the model itself computes on `x` (its own
    forward, the heads hooked for the call): the oracle runs exactly the model's decisions,
    whatever the last bits of its own activations would have decided."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, block in enumerate(model.blocks):
        for kind, head in (("s", block.lnet), ("c", block.cnet)):
            if head is not None:
                handles.append(head.register_forward_hook(
                    lambda module, args, out, key=(i, kind): seen.__setitem__(key, out)))  # fmt: skip
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    plans = []
    for i, block in enumerate(model.blocks):
        s, c = seen.get((i, "s")), seen.get((i, "c"))
        if not block.gating or (s is None and c is None and block.lnet is not None):
            plans.append(SKIP if block.gating else _plan(block, x.shape[0], None, None))
            continue
        plans.append(_plan(block, x.shape[0], None if s is None else s.squeeze(1), c))
    return plans
