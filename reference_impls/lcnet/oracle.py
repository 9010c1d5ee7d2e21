"""LC-Net written out by hand, for the speed comparisons (DESIGN §4): plain PyTorch executing
exactly the decisions an `LCNet` makes, with its own gate heads and weights, and none of the
routing contract (no trace, no engines, no generic gather/scatter).

* `forward_with_decisions(model, x)`: the gate heads decide, as in the model (the "ideal":
  what a person would write for these decisions; the project's gap to it is implementation).
* `forward_with_decisions(model, x, decisions)` with `record_decisions(model, x)`: the
  decisions made beforehand, no gate heads (the "oracle": the network with the skipped parts
  removed, the practical limit). `LCNet.oracle(x)` hands it to the latency harness.

Batch 1 branches in Python; a larger batch gathers the rows that keep a block, and groups the
rows that share a channel pattern. Basic blocks (conv1, conv2) only: a model with bottleneck
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
    h = h * scale_c[:, :, None, None]
    return _bn(F.conv2d(h, c2.weight[:, keep_c], None, c2.stride, c2.padding), block.conv2.norm)


def _block(block: LCNetBlock, x: torch.Tensor, decisions: dict | None) -> torch.Tensor:
    """One block on a batch; `decisions` (oracle) holds precomputed gate values."""
    if not block.gating:
        return F.relu(_residual(block, x, None, None) + block.shortcut(x))
    if decisions is None:
        pooled = x.mean((2, 3))
        s = block.lnet(pooled).squeeze(1) if block.lnet is not None else None
        c = block.cnet(pooled) if block.cnet is not None else None
    else:
        s, c = decisions["s"], decisions["c"]
    rows = None if s is None else (s >= block.tau_l)
    n = x.shape[0]
    if n == 1:
        if rows is not None and not bool(rows[0]):
            return x  # skipped: the identity (LC-Net never skips downsampling blocks)
        keep_c = scale_c = None
        if c is not None:
            keep_c = (c[0] >= block.tau_c).nonzero().squeeze(1)
            scale_c = block.cnet.scale(c[:, keep_c])
        r = _residual(block, x, keep_c, scale_c)
        if s is not None:
            r = r * block.lnet.scale(s)[:, None, None, None]
        return F.relu(r + block.shortcut(x))
    idx = None if rows is None else rows.nonzero().squeeze(1)
    xs = x if idx is None else x[idx]
    if xs.shape[0] == 0:
        return x
    if c is None:
        r = _residual(block, xs, None, None)
    else:
        cs = c if idx is None else c[idx]
        keep = cs >= block.tau_c
        patterns, inverse = torch.unique(keep, dim=0, return_inverse=True)
        r = None
        for g, pattern in enumerate(patterns):
            members = (inverse == g).nonzero().squeeze(1)
            keep_c = pattern.nonzero().squeeze(1)
            part = _residual(block, xs[members], keep_c, block.cnet.scale(cs[members][:, keep_c]))
            if r is None:
                r = part.new_empty((xs.shape[0], *part.shape[1:]))
            r[members] = part
    if s is not None:
        r = r * block.lnet.scale(s if idx is None else s[idx])[:, None, None, None]
    out = F.relu(r + block.shortcut(xs))
    if idx is None:
        return out
    return x.index_copy(0, idx, out)


def supports_oracle(model: LCNet) -> bool:
    """True when every block is a basic block (the hand-written forward covers conv1, conv2)."""
    return all(block.conv3 is None for block in model.blocks)


@torch.no_grad()
def forward_with_decisions(model: LCNet, x: torch.Tensor, decisions: list[dict] | None = None) -> torch.Tensor:
    """The LC-Net's logits, hand-written; with `decisions` (from `record_decisions`), the oracle."""
    h = model.stem(x)
    for i, block in enumerate(model.blocks):
        h = _block(block, h, None if decisions is None else decisions[i])
    return model.fc(torch.flatten(model.pool(h), 1))


@torch.no_grad()
def record_decisions(model: LCNet, x: torch.Tensor) -> list[dict]:
    """Every block's gate values for `x` (what the oracle is handed instead of the heads)."""
    out, h = [], model.stem(x)
    for block in model.blocks:
        pooled = h.mean((2, 3))
        gating = block.gating
        d = {"s": block.lnet(pooled).squeeze(1) if gating and block.lnet is not None else None,
             "c": block.cnet(pooled) if gating and block.cnet is not None else None}  # fmt: skip
        out.append(d)
        h = _block(block, h, d)
    return out
