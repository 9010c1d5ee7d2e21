"""Hand-written forward passes of the four D2NN designs, for the speed benchmarks: plain
PyTorch that runs exactly the nodes a `D2NN` runs, with its own modules and Q-networks, as a
person would write each design by hand, and none of the graph executor or the routing
contract. At batch 1 (a Python `if` per control node): `ideal_forward` decides with the
Q-networks (the gap to the project is the executor's); `oracle_forward` is handed the actions
(the practical limit: no Q-networks at all). At batch > 1, `ideal_batch_forward`: each control
node's rows split by action (`nonzero`), each branch run on its rows (`index_select`), the
results written into one output (`index_copy_`).

The designs are recognised by their node names (see `reference_impls.d2nn.designs`).
"""

from __future__ import annotations

import torch

from reference_impls.d2nn.designs import CHAIN_CHOICES, CascadeQ
from reference_impls.d2nn.graph import D2NN


def design(model: D2NN) -> str:
    names = set(model.specs)
    if {"trunk", "q", "high", "low"} <= names:
        return "highlow"
    if {"s1", "c1", "stop1"} <= names:
        return "cascade"
    if {"stem", "c1", "full1"} <= names:
        return "chain"
    if {"trunk", "root"} <= names:
        return "hierarchical"
    raise ValueError("not one of the four D2NN designs")


def _act(q: torch.Tensor) -> int:
    return int(q.argmax(1))


def _leaf_groups(model: D2NN) -> list[torch.Tensor]:
    """Class indices of each hierarchical branch (the output's LeafScatter, read once)."""
    groups = model.__dict__.get("_ideal_groups")
    if groups is None:
        order = model.nodes["out"].position.argsort()
        branches = [model.nodes[f"b{i}"] for i in range(len(model.specs["out"].inputs))]
        sizes = [[m for m in b.modules() if isinstance(m, torch.nn.Linear)][-1].out_features for b in branches]
        groups = list(order.split(sizes))
        model.__dict__["_ideal_groups"] = groups
    return groups


@torch.no_grad()
def ideal_forward(model: D2NN, x: torch.Tensor, actions: dict[str, int] | None = None) -> torch.Tensor:
    """The D2NN's logits for one image, hand-written; with `actions` (from `record_actions`),
    the oracle (the Q-networks do not run)."""
    n = model.nodes

    def choose(control: str, *inputs: torch.Tensor) -> int:
        return actions[control] if actions is not None else _act(n[control](*inputs))

    kind = design(model)
    if kind == "highlow":
        h = n["trunk"](x)
        return n["high"](h) if choose("q", h) == 0 else n["low"](h)
    if kind == "cascade":
        s = x
        for k in range(1, 5):
            s = n[f"s{k}"](s)
            logits = n[f"h{k}"](s)
            if k == 4:
                return logits
            control = n[f"c{k}"] if actions is None else None
            inputs = (s, logits) if isinstance(control, CascadeQ) else (logits,)
            if choose(f"c{k}", *inputs) == 0:
                return logits
    if kind == "chain":
        h = n["stem"](x)
        step = 1
        while f"c{step}" in n:
            h = n[f"{CHAIN_CHOICES[choose(f'c{step}', h)]}{step}"](h)
            step += 1
        return n["head"](h)
    h = n["trunk"](x)
    branch = choose("root", h)
    groups = _leaf_groups(model)
    out = h.new_full((1, sum(len(g) for g in groups)), float("-inf"))
    out[:, groups[branch]] = n[f"b{branch}"](h)
    return out


def oracle_forward(model: D2NN, x: torch.Tensor, actions: dict[str, int]) -> torch.Tensor:
    return ideal_forward(model, x, actions)


@torch.no_grad()
def record_actions(model: D2NN, x: torch.Tensor) -> dict[str, int]:
    """The action each control node reached by one image takes (what the oracle is handed)."""
    run = model(x, return_run=True)
    return {c: int(run.actions[c][0]) for c in model.controls if int(run.actions[c][0]) >= 0}


def _split(action: torch.Tensor, choices: int) -> list[torch.Tensor]:
    return [(action == a).nonzero().squeeze(1) for a in range(choices)]


@torch.no_grad()
def ideal_batch_forward(model: D2NN, x: torch.Tensor) -> torch.Tensor:
    """The D2NN's logits for a batch, hand-written: per control node, the rows of each action
    run that action's branch, written into one output."""
    n = model.nodes
    kind = design(model)
    if kind == "highlow":
        h = n["trunk"](x)
        out = None
        for idx, branch in zip(_split(n["q"](h).argmax(1), 2), ("high", "low"), strict=True):
            if idx.numel():
                y = n[branch](h.index_select(0, idx))
                out = y.new_zeros((x.shape[0], *y.shape[1:])) if out is None else out
                out.index_copy_(0, idx, y)
        return out
    if kind == "cascade":
        rows = torch.arange(x.shape[0])
        s, out = x, None
        for k in range(1, 5):
            s = n[f"s{k}"](s)
            logits = n[f"h{k}"](s)
            out = logits.new_zeros((x.shape[0], *logits.shape[1:])) if out is None else out
            if k == 4:
                out.index_copy_(0, rows, logits)
                break
            control = n[f"c{k}"]
            q = control(s, logits) if isinstance(control, CascadeQ) else control(logits)
            stop, go = _split(q.argmax(1), 2)
            out.index_copy_(0, rows.index_select(0, stop), logits.index_select(0, stop))
            if not go.numel():
                break
            rows, s = rows.index_select(0, go), s.index_select(0, go)
        return out
    if kind == "chain":
        h = n["stem"](x)
        step = 1
        while f"c{step}" in n:
            merged = None
            for idx, choice in zip(_split(n[f"c{step}"](h).argmax(1), len(CHAIN_CHOICES)), CHAIN_CHOICES, strict=True):
                if idx.numel():
                    y = n[f"{choice}{step}"](h.index_select(0, idx))
                    merged = y.new_zeros((h.shape[0], *y.shape[1:])) if merged is None else merged
                    merged.index_copy_(0, idx, y)
            h, step = merged, step + 1
        return n["head"](h)
    h = n["trunk"](x)
    groups = _leaf_groups(model)
    out = h.new_full((x.shape[0], sum(len(g) for g in groups)), float("-inf"))
    for b, idx in enumerate(_split(n["root"](h).argmax(1), len(groups))):
        if idx.numel():
            part = out.index_select(0, idx)
            part[:, groups[b]] = n[f"b{b}"](h.index_select(0, idx))
            out.index_copy_(0, idx, part)
    return out
