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
import torch.nn.functional as F

from reference_impls.lcnet.model import LCNet, LCNetBlock


def _bn(y: torch.Tensor, norm: torch.nn.BatchNorm2d, idx: torch.Tensor | None = None) -> torch.Tensor:
    def pick(t):
        return t if idx is None else t[idx]

    return F.batch_norm(y, pick(norm.running_mean), pick(norm.running_var), pick(norm.weight), pick(norm.bias),
                        False, 0.0, norm.eps)  # fmt: skip


def _residual(block: LCNetBlock, x: torch.Tensor, keep_c: torch.Tensor | None, scale_c: torch.Tensor | None) -> torch.Tensor:
    """conv2(relu(bn1(conv1(x)))·scale) on the kept inner channels `keep_c` (indices) of every row of x."""
    c1, c2 = block.conv1.conv, block.conv2.conv
    if keep_c is None:
        h = F.relu(_bn(F.conv2d(x, c1.weight, None, c1.stride, c1.padding), block.conv1.norm))
        return _bn(F.conv2d(h, c2.weight, None, c2.stride, c2.padding), block.conv2.norm)
    h = F.relu(_bn(F.conv2d(x, c1.weight[keep_c], None, c1.stride, c1.padding), block.conv1.norm, keep_c))
    h = h * scale_c
    return _bn(F.conv2d(h, c2.weight[:, keep_c], None, c2.stride, c2.padding), block.conv2.norm)


_SKIP = {"skip": True}


def _plan(block: LCNetBlock, n: int, s: torch.Tensor | None, c: torch.Tensor | None) -> dict:
    """What one block runs on a batch of `n`, from its gate values: `rows` (indices of the rows
    that run it; None: all), `groups` (per set of rows sharing a channel pattern: their indices
    among `rows` or None for all, the kept inner channels, their scales; None: no C-Net) and
    `scale_s` (the L-Net scale of the rows), or `skip`. Batch 1 decides in Python."""
    idx = None
    if s is not None:
        rows = s >= block.tau_l
        if n == 1:
            if not bool(rows[0]):
                return _SKIP  # the identity (LC-Net never skips downsampling blocks)
        else:
            idx = rows.nonzero().squeeze(1)
            if idx.numel() == 0:
                return _SKIP
            if idx.numel() == n:
                idx = None
    plan: dict = {"skip": False, "rows": idx, "groups": None, "scale_s": None}
    if s is not None:
        plan["scale_s"] = block.lnet.scale(s if idx is None else s[idx])[:, None, None, None]
    if c is not None:
        # `c` holds every row's gate values, or (from the sparse engine) only the routed rows'
        cs = c if idx is None or c.shape[0] != n else c[idx]
        if cs.shape[0] == 1:
            keep_c = (cs[0] >= block.tau_c).nonzero().squeeze(1)
            plan["groups"] = [(None, keep_c, block.cnet.scale(cs[:, keep_c])[:, :, None, None])]
        else:
            patterns, inverse = torch.unique(cs >= block.tau_c, dim=0, return_inverse=True)
            groups = []
            for g, pattern in enumerate(patterns):
                members = None if len(patterns) == 1 else (inverse == g).nonzero().squeeze(1)
                keep_c = pattern.nonzero().squeeze(1)
                picked = cs if members is None else cs[members]
                groups.append((members, keep_c, block.cnet.scale(picked[:, keep_c])[:, :, None, None]))
            plan["groups"] = groups
    return plan


def _run(block: LCNetBlock, x: torch.Tensor, plan: dict) -> torch.Tensor:
    """One block on a batch by its plan: index tensors only, no decision and no host read (so
    that a fixed plan can be captured in a CUDA graph)."""
    if plan["skip"]:
        return x
    idx, groups = plan["rows"], plan["groups"]
    xs = x if idx is None else x.index_select(0, idx)
    if groups is None:
        r = _residual(block, xs, None, None)
    elif groups[0][0] is None:  # one pattern for every row
        r = _residual(block, xs, groups[0][1], groups[0][2])
    else:
        r = None
        for members, keep_c, scale_c in groups:
            part = _residual(block, xs.index_select(0, members), keep_c, scale_c)
            if r is None:
                r = part.new_empty((xs.shape[0], *part.shape[1:]))
            r[members] = part
    if plan["scale_s"] is not None:
        r = r * plan["scale_s"]
    out = F.relu(r + block.shortcut(xs))
    return out if idx is None else x.index_copy(0, idx, out)


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
        h = _run(block, h, plan)
    return model.fc(torch.flatten(model.pool(h), 1))


@torch.no_grad()
def record_decisions(model: LCNet, x: torch.Tensor) -> list[dict]:
    """Every block's plan for `x`: which rows run it, with which channels and scales (what the
    oracle is handed instead of the gate heads)."""
    plans, h = [], model.stem(x)
    for block in model.blocks:
        plan = _plan(block, h.shape[0], *_gate_values(block, h))
        plans.append(plan)
        h = _run(block, h, plan)
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
            plans.append(_SKIP if block.gating else _plan(block, x.shape[0], None, None))
            continue
        plans.append(_plan(block, x.shape[0], None if s is None else s.squeeze(1), c))
    return plans
