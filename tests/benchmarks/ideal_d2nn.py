"""Hand-written forward passes of the four D2NN designs at batch 1, for the speed benchmarks:
plain PyTorch that runs exactly the nodes a `D2NN` runs for one image, with its own modules and
Q-networks, as a person would write each design by hand (a Python `if` per control node), and
none of the graph executor or the routing contract. `ideal_forward` decides with the Q-networks
(the gap to the project is the executor's); `oracle_forward` is handed the actions (the
practical limit: no Q-networks at all).

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
